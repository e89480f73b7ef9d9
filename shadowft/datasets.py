"""Training data: rows from a Hub download or a local file, sampled, checked and registered for LLaMA-Factory.

A prepared dataset is a LLaMA-Factory dataset folder, ``data/datasets/{name}/``:

- ``train.jsonl``: the rows, one JSON object a line, in (file, row) order;
- ``dataset_info.json``: its registration under ``name`` (formatting, columns, tags), generated here;
- ``shadowft_dataset.json``: the manifest: where the rows came from (repository, resolved
  commit, or local file; every source file's sha256 and row count), the sampling rule and the
  rows it selected, and the sha256 of every file written.

Sampling is a rule, not a random state: the ``count`` rows whose sha256 of
``"{seed}/{file}/{row}"`` is smallest (``file`` the source file's path in the repository, or its
name for a local file; ``row`` its 0-based index in that file). The same files give the same
rows whatever order they are listed in, on any machine and Python version.

Every kept row is checked the way LLaMA-Factory will read it (``RowChecker``): a row it would
drop or misread (missing column, unknown role, a turn out of order, an odd turn count, empty
conversation, non-string content) stops the preparation with an error naming the file, the row
and the key, before any training job starts; LLaMA-Factory itself only logs such rows and
skips them. With ``invalid_rows: skip`` such rows are left out instead, each listed in the
manifest with its problems, and a sample walks its ranking on to the next valid row.

Runs in the train environment (pyarrow reads parquet; imported where a parquet file is read)
and in the core one for JSON files: the top level imports only the standard library.

    python -m shadowft.datasets prepare NAME SPEC_JSON SOURCE DEST
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import heapq
import json
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowft.io import atomic_directory, atomic_write_json, atomic_write_text, sha256_file
from shadowft.layout import DATASET_MANIFEST, MODEL_MANIFEST

FORMATS = ("sharegpt", "alpaca")
DATA_SUFFIXES = (".parquet", ".jsonl", ".json")
ROWS_FILE = "train.jsonl"
DATASET_INFO = "dataset_info.json"
SAMPLE_RULE = "the `count` rows with the smallest sha256('{seed}/{file}/{row}'), row 0-based"
# At most this many format errors are listed (each names its file, row and key).
MAX_ERRORS = 20


class DatasetFormatError(ValueError):
    """Rows LLaMA-Factory would drop or misread; the message names each file, row and key."""


@dataclass(frozen=True)
class SharegptTags:
    """The keys and role names of one sharegpt turn style, as LLaMA-Factory's `tags` call them."""

    role_tag: str
    content_tag: str
    user_tag: str
    assistant_tag: str
    system_tag: str = "system"
    # LLaMA-Factory's defaults for tool use.
    observation_tag: str = "observation"
    function_tag: str = "function_call"

    def info(self) -> dict[str, str]:
        return {
            "role_tag": self.role_tag,
            "content_tag": self.content_tag,
            "user_tag": self.user_tag,
            "assistant_tag": self.assistant_tag,
            "system_tag": self.system_tag,
        }


# The two turn styles in use: ShareGPT's own (Infinity-Instruct, LLaMA-Factory's default tags)
# and OpenAI's, told apart by the key that names the speaker.
SHAREGPT_STYLES = {
    "from": SharegptTags("from", "value", "human", "gpt"),
    "role": SharegptTags("role", "content", "user", "assistant"),
}
SHAREGPT_MESSAGES = "conversations"
SHAREGPT_COLUMNS = (SHAREGPT_MESSAGES, "system")
ALPACA_COLUMNS = ("instruction", "input", "output", "system", "history")


@dataclass(frozen=True)
class Row:
    """One source row: the file it is in (as the manifest names it), its 0-based index, its columns."""

    file: str
    index: int
    values: dict[str, Any]
    line: int | None = None  # for JSON lines: the 1-based line, which editors show

    def where(self) -> str:
        return f"{self.file}, row {self.index}" + (f" (line {self.line})" if self.line is not None else "")


# ---------------------------------------------------------------- reading rows


def count_rows(path: Path) -> int:
    """How many rows a data file holds (for parquet, from its metadata alone)."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows
    return sum(1 for _ in _json_rows(path, str(path)))


def read_rows(path: Path, label: str, columns: Sequence[str], indices: Iterable[int] | None = None) -> Iterator[Row]:
    """The rows of one data file (only `indices`, sorted, when given), with the `columns` it has."""
    wanted = None if indices is None else sorted(set(indices))
    if path.suffix == ".parquet":
        yield from _parquet_rows(path, label, columns, wanted)
        return
    keep = None if wanted is None else set(wanted)
    for row in _json_rows(path, label):
        if keep is None or row.index in keep:
            yield row


def _parquet_rows(path: Path, label: str, columns: Sequence[str], wanted: list[int] | None) -> Iterator[Row]:
    """Rows of a parquet file, reading only the row groups that hold wanted rows."""
    import pyarrow.parquet as pq

    file = pq.ParquetFile(path)
    present = [name for name in columns if name in file.schema_arrow.names]
    start = 0
    for group in range(file.num_row_groups):
        size = file.metadata.row_group(group).num_rows
        local = list(range(size)) if wanted is None else [i - start for i in wanted if start <= i < start + size]
        if local:
            table = file.read_row_group(group, columns=present)
            if wanted is not None:
                table = table.take(local)
            for offset, values in zip(local, table.to_pylist(), strict=True):
                yield Row(label, start + offset, values)
        start += size


def _json_rows(path: Path, label: str) -> Iterator[Row]:
    """Rows of a JSON array file, or of a JSON lines file (one object a line; blank lines skipped)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{label}: not valid JSON ({error})") from None
        for index, values in enumerate(rows):
            yield Row(label, index, values)
        return
    index = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            values = json.loads(line)
        except json.JSONDecodeError as error:
            raise DatasetFormatError(f"{label}, line {number}: not valid JSON ({error})") from None
        yield Row(label, index, values, line=number)
        index += 1


# ---------------------------------------------------------------- sampling


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


# ---------------------------------------------------------------- checking rows


def _string_or_missing(row: Row, key: str, problems: list[str]) -> None:
    value = row.values.get(key)
    if value is not None and not isinstance(value, str):
        problems.append(f"{row.where()}: {key}: not a string ({type(value).__name__})")


def sharegpt_style(row: Row) -> SharegptTags | None:
    """The turn style of a row's first turn, or None when it cannot be told."""
    turns = row.values.get(SHAREGPT_MESSAGES)
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        for key, tags in SHAREGPT_STYLES.items():
            if key in turns[0]:
                return tags
    return None


def check_sharegpt(row: Row, tags: SharegptTags) -> list[str]:
    """What LLaMA-Factory's sharegpt reader would reject in `row`, one message per problem."""
    problems: list[str] = []
    if SHAREGPT_MESSAGES not in row.values:
        present = ", ".join(sorted(row.values)) or "none"
        return [f"{row.where()}: no column {SHAREGPT_MESSAGES!r} (sharegpt needs it; columns: {present})"]
    turns = row.values[SHAREGPT_MESSAGES]
    key = SHAREGPT_MESSAGES
    if not isinstance(turns, list):
        return [f"{row.where()}: {key}: a list of turns expected, got {type(turns).__name__}"]
    if not turns:
        return [f"{row.where()}: {key}: empty conversation"]
    _string_or_missing(row, "system", problems)
    # LLaMA-Factory: an optional system turn first, then user (or observation) and assistant
    # (or function call) turns alternating, ending with the assistant: an even count.
    expected = ((tags.user_tag, tags.observation_tag), (tags.assistant_tag, tags.function_tag))
    position = 0
    for number, turn in enumerate(turns):
        where = f"{row.where()}: {key}[{number}]"
        if not isinstance(turn, dict):
            problems.append(f"{where}: a turn must be an object with {tags.role_tag!r} and {tags.content_tag!r}")
            continue
        for needed in (tags.role_tag, tags.content_tag):
            if needed not in turn:
                problems.append(f"{where}: no key {needed!r} (turns here use {tags.role_tag!r}/{tags.content_tag!r})")
        if tags.content_tag in turn and not isinstance(turn[tags.content_tag], str):
            problems.append(f"{where}.{tags.content_tag}: not a string ({type(turn[tags.content_tag]).__name__})")
        role = turn.get(tags.role_tag)
        if role is None:
            continue
        if number == 0 and role == tags.system_tag:
            continue
        allowed = expected[position % 2]
        if role not in allowed:
            known = {tags.user_tag, tags.assistant_tag, tags.system_tag, tags.observation_tag, tags.function_tag}
            if role not in known:
                problem = f"unknown role {role!r} (known: {', '.join(sorted(known))})"
            elif role == tags.system_tag:
                problem = f"role {role!r} is allowed only as the first turn"
            else:
                problem = f"role {role!r} out of turn: LLaMA-Factory expects {' or '.join(map(repr, allowed))} here"
            problems.append(f"{where}.{tags.role_tag}: {problem}")
        position += 1
    if not problems and position % 2:
        problems.append(
            f"{row.where()}: {key}: {position} turns after the system prompt; LLaMA-Factory needs "
            f"user/assistant pairs, ending with {tags.assistant_tag!r}"
        )
    return problems


def check_alpaca(row: Row) -> list[str]:
    """What LLaMA-Factory's alpaca reader would reject in `row`, one message per problem."""
    problems: list[str] = []
    for column in ("instruction", "output"):
        if column not in row.values:
            present = ", ".join(sorted(row.values)) or "none"
            problems.append(f"{row.where()}: no column {column!r} (alpaca needs it; columns: {present})")
    if problems:
        return problems
    instruction, output = row.values["instruction"], row.values["output"]
    if not isinstance(instruction, str):
        problems.append(f"{row.where()}: instruction: not a string ({type(instruction).__name__})")
    elif not instruction.strip() and not (row.values.get("input") or "").strip():
        problems.append(f"{row.where()}: instruction: empty (and no input): nothing to answer")
    if not isinstance(output, str):
        problems.append(f"{row.where()}: output: not a string ({type(output).__name__})")
    for column in ("input", "system"):
        _string_or_missing(row, column, problems)
    history = row.values.get("history")
    if history is not None:
        if not isinstance(history, list):
            problems.append(f"{row.where()}: history: a list of [instruction, response] pairs expected")
        else:
            for number, pair in enumerate(history):
                if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                    problems.append(f"{row.where()}: history[{number}]: a pair of strings expected")
    return problems


class RowChecker:
    """Checks rows one by one, remembering the sharegpt turn style the first row set."""

    def __init__(self, format: str) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.format = format
        self.tags: SharegptTags | None = None

    def problems(self, row: Row) -> list[str]:
        """What LLaMA-Factory would reject in `row` (an empty list when it reads it as meant)."""
        if not isinstance(row.values, dict):
            return [f"{row.where()}: a row must be an object, got {type(row.values).__name__}"]
        if self.format == "alpaca":
            return check_alpaca(row)
        style = sharegpt_style(row)
        if self.tags is None and style is not None:
            self.tags = style
        elif style is not None and style != self.tags:
            return [
                f"{row.where()}: {SHAREGPT_MESSAGES}[0]: turns use {style.role_tag!r}/{style.content_tag!r}, "
                f"earlier rows {self.tags.role_tag!r}/{self.tags.content_tag!r}; one dataset uses one style"
            ]
        return check_sharegpt(row, self.tags or SHAREGPT_STYLES["from"])

    def style(self) -> SharegptTags | None:
        """The sharegpt turn style of the rows checked (None for alpaca)."""
        return (self.tags or SHAREGPT_STYLES["from"]) if self.format == "sharegpt" else None


def check_rows(rows: Iterable[Row], format: str) -> SharegptTags | None:
    """Check every row; return the sharegpt turn style (None for alpaca). Raise listing the problems."""
    checker = RowChecker(format)
    problems: list[str] = []
    for row in rows:
        problems.extend(checker.problems(row))
        if len(problems) >= MAX_ERRORS:
            break
    if problems:
        shown = problems[:MAX_ERRORS]
        more = " (the first ones; fix these and rerun)" if len(problems) >= MAX_ERRORS else ""
        raise DatasetFormatError(
            f"{len(shown)} format error(s){more}; LLaMA-Factory would drop or misread these rows:\n  "
            + "\n  ".join(shown)
        )
    return checker.style()


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


# ---------------------------------------------------------------- registering


def dataset_info(name: str, format: str, tags: SharegptTags | None, columns: Iterable[str]) -> dict:
    """LLaMA-Factory's registration of the prepared rows file, for the columns the rows have."""
    present = set(columns)
    if format == "sharegpt":
        entry_columns = {"messages": SHAREGPT_MESSAGES}
        if "system" in present:
            entry_columns["system"] = "system"
        entry = {"file_name": ROWS_FILE, "formatting": "sharegpt", "columns": entry_columns}
        entry["tags"] = (tags or SHAREGPT_STYLES["from"]).info()
        return {name: entry}
    alpaca = {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}
    return {
        name: {
            "file_name": ROWS_FILE,
            "formatting": "alpaca",
            "columns": {key: column for key, column in alpaca.items() if column in present},
        }
    }


def _kept_values(row: Row, format: str) -> dict[str, Any]:
    """The columns LLaMA-Factory reads, nulls dropped (a parquet file gives every column to every row)."""
    columns = SHAREGPT_COLUMNS if format == "sharegpt" else ALPACA_COLUMNS
    return {key: row.values[key] for key in columns if row.values.get(key) is not None}


def _source_files(spec: Mapping[str, Any], source: Path) -> tuple[dict, list[tuple[str, Path]]]:
    """Where the rows come from (for the manifest) and each data file with the name sampling uses."""
    if spec["source"] == "hub":
        download = json.loads((source / MODEL_MANIFEST).read_text(encoding="utf-8"))
        hashes = {entry["path"]: entry for entry in download["files"]}
        files = sorted((name, source / name) for name in hashes if name.endswith(DATA_SUFFIXES))
        record = {key: download["source"][key] for key in ("type", "repo_id", "revision", "commit", "endpoint")}
        described = [{**hashes[name], "sha256": sha256_file(path)} for name, path in files]
        for entry, (name, path) in zip(described, files, strict=True):
            if entry["sha256"] != hashes[name]["sha256"]:
                was = hashes[name]["sha256"]
                raise ValueError(f"{path}: changed since the download (sha256 {entry['sha256']}, was {was})")
        return {**record, "files": described}, files
    path = Path(source)
    files = [(path.name, path)]
    return {
        "type": "local",
        "file": str(path.resolve()),
        "files": [{"path": path.name, "size": path.stat().st_size, "sha256": sha256_file(path)}],
    }, files


def prepare_dataset(name: str, spec: Mapping[str, Any], source: Path, dest: Path) -> dict:
    """Sample, check and register the rows of `source` (a download folder or a local file) as `dest`.

    `spec` is the dataset's config entry (source hub or local with a file, format, sample).
    Returns the manifest, also written to ``dest/shadowft_dataset.json``; `dest` appears only when complete.
    """
    format = spec.get("format", "sharegpt")
    columns = SHAREGPT_COLUMNS if format == "sharegpt" else ALPACA_COLUMNS
    record, files = _source_files(spec, Path(source))
    if not files:
        raise ValueError(f"dataset {name}: {source} holds no data file ({', '.join(DATA_SUFFIXES)})")
    labels = dict(files)
    counts = {label: count_rows(path) for label, path in files}
    for entry in record["files"]:
        entry["rows"] = counts[entry["path"]]
    sample = spec.get("sample")

    def read(wanted: Mapping[str, list[int] | None]) -> Iterator[Row]:
        for label, indices in wanted.items():
            yield from read_rows(labels[label], _shown(labels[label], label, spec), columns, indices)

    skipped: list[dict] = []
    invalid_rows = spec.get("invalid_rows", "error")
    if invalid_rows == "skip":
        rows, skipped, tags = valid_rows(read, counts, format, sample)
        shown_to_label = {_shown(path, label, spec): label for label, path in files}
        selected: dict[str, list[int]] = {}
        for row in rows:
            selected.setdefault(shown_to_label[row.file], []).append(row.index)
        selected = {label: sorted(indices) for label, indices in sorted(selected.items())}
        rows.sort(key=lambda row: (shown_to_label[row.file], row.index))
    else:
        selected = (
            dict.fromkeys(sorted(labels))
            if sample is None
            else sample_rows(counts, sample["count"], sample.get("seed", 0))
        )
        rows = list(read(selected))
        tags = check_rows(rows, format)
    kept = [_kept_values(row, format) for row in rows]
    present = sorted({key for values in kept for key in values})
    info = dataset_info(name, format, tags, present)
    with atomic_directory(Path(dest)) as tmp:
        lines = (json.dumps(values, ensure_ascii=False, sort_keys=True) + "\n" for values in kept)
        atomic_write_text(tmp / ROWS_FILE, "".join(lines))
        atomic_write_json(tmp / DATASET_INFO, info)
        manifest = {
            "kind": "dataset",
            "name": name,
            "format": format,
            "source": record,
            "sample": None
            if sample is None
            else {
                "rule": SAMPLE_RULE + (", among the rows that pass the checks" if invalid_rows == "skip" else ""),
                "count": sample["count"],
                "seed": sample.get("seed", 0),
                "selected": selected,
            },
            "invalid_rows": invalid_rows,
            "skipped": skipped,
            "rows": len(kept),
            "columns": present,
            "outputs": [
                {"path": file, "size": (tmp / file).stat().st_size, "sha256": sha256_file(tmp / file)}
                for file in (ROWS_FILE, DATASET_INFO)
            ],
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        atomic_write_json(tmp / DATASET_MANIFEST, manifest)
    return manifest


def _shown(path: Path, label: str, spec: Mapping[str, Any]) -> str:
    """How errors name a file: the local path as configured, or the repository path of a download."""
    if spec["source"] == "hub":
        return f"{spec['repo']}@{spec['revision']}:{label}"
    return str(spec.get("file", path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shadowft.datasets", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    prepare = commands.add_parser("prepare", help="sample, check and register one dataset of the config")
    prepare.add_argument("name", help="the dataset's key in the config (its name in dataset_info.json)")
    prepare.add_argument("spec", help="the dataset's config entry, as JSON")
    prepare.add_argument("source", type=Path, help="the download folder (source hub) or the file (source local)")
    prepare.add_argument("dest", type=Path, help="the LLaMA-Factory dataset folder to write")
    args = parser.parse_args(argv)
    try:
        manifest = prepare_dataset(args.name, json.loads(args.spec), args.source, args.dest)
    except (DatasetFormatError, ValueError) as error:
        print(f"dataset {args.name}: {error}", file=sys.stderr)
        return 1
    print(f"dataset {args.name}: {manifest['rows']} rows, {args.dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
