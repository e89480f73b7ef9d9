"""The sampling rule, over every row or only the valid ones: the ``count`` rows of smallest sha256.

A row's key is the sha256 of ``"{seed}/{file}/{row}"``, so the same files give the same rows
whatever order they are listed in, on any machine and Python version. Standard library only.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Callable, Iterator, Mapping

from shadowft.data.checks import MAX_ERRORS, RowChecker, SharegptTags
from shadowft.data.rows import DatasetFormatError, Row

SAMPLE_RULE = "the `count` rows with the smallest sha256('{seed}/{file}/{row}'), row 0-based"


def sample_key(seed: int, file: str, index: int) -> bytes:
    return hashlib.sha256(f"{seed}/{file}/{index}".encode()).digest()


def sample_rows(row_counts: Mapping[str, int], count: int, seed: int) -> dict[str, list[int]]:
    """The rows SAMPLE_RULE selects: {file: sorted row indices}, files in name order."""
    total = sum(row_counts.values())
    if count > total:
        raise ValueError(f"sample.count is {count}, but the source files hold only {total} rows")
    selected: dict[str, list[int]] = {file: [] for file in sorted(row_counts)}
    for _, file, index in heapq.nsmallest(count, _ranking(row_counts, seed)):
        selected[file].append(index)
    return {file: sorted(indices) for file, indices in selected.items() if indices}


def valid_rows(
    read: Callable[[Mapping[str, list[int] | None]], Iterator[Row]],
    row_counts: Mapping[str, int],
    format: str,
    sample: Mapping[str, int] | None,
) -> tuple[list[Row], list[dict], SharegptTags | None]:
    """The rows that pass the checks, the ones skipped (where, problems), and the turn style.

    Without a sample: every valid row. With one: SAMPLE_RULE over the valid rows, i.e. the
    ranking is walked past an invalid row to the next, and only rows it reaches are read.
    `read({file: indices or None})` yields those rows (with `Row.file` the file as errors name it).
    """
    checker = RowChecker(format)
    kept: list[Row] = []
    skipped: list[dict] = []

    def judge(row: Row) -> None:
        problems = checker.problems(row)
        if problems:
            skipped.append({"row": row.where(), "problems": problems})
        else:
            kept.append(row)

    if sample is None:
        for row in read(dict.fromkeys(sorted(row_counts))):
            judge(row)
        return kept, skipped, checker.style()
    count, seed = sample["count"], sample.get("seed", 0)
    total = sum(row_counts.values())
    examined = 0
    while len(kept) < count and examined < total:
        limit = min(total, examined + 2 * (count - len(kept)))
        batch = [(file, index) for _, file, index in heapq.nsmallest(limit, _ranking(row_counts, seed))][examined:]
        wanted: dict[str, list[int]] = {}
        for file, index in batch:
            wanted.setdefault(file, []).append(index)
        by_ref = {(file, row.index): row for file, rows in _grouped(read, wanted) for row in rows}
        for ref in batch:
            if len(kept) == count:
                break
            judge(by_ref[ref])
        examined = limit
    if len(kept) < count:
        raise DatasetFormatError(
            f"sample.count is {count}, but only {len(kept)} of the {total} rows pass the checks; the first skipped:\n  "
            + "\n  ".join(problem for entry in skipped[:MAX_ERRORS] for problem in entry["problems"][:1])
        )
    return kept, skipped, checker.style()


def _ranking(row_counts: Mapping[str, int], seed: int) -> Iterator[tuple[bytes, str, int]]:
    return ((sample_key(seed, file, index), file, index) for file, n in row_counts.items() for index in range(n))


def _grouped(read, wanted: Mapping[str, list[int]]) -> Iterator[tuple[str, list[Row]]]:
    for file, indices in wanted.items():
        yield file, list(read({file: indices}))
