"""Rows of one training data file (parquet, JSON lines or a JSON array), read as `Row` records naming their place.

Standard library only at the top level: pyarrow is imported where a parquet file is read
(the train environment), and JSON files are read in the core one too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_SUFFIXES = (".parquet", ".jsonl", ".json")


class DatasetFormatError(ValueError):
    """Rows LLaMA-Factory would drop or misread; the message names each file, row and key."""


@dataclass(frozen=True)
class Row:
    """One source row: the file it is in (as the manifest names it), its 0-based index, its columns."""

    file: str
    index: int
    values: dict[str, Any]
    line: int | None = None  # for JSON lines: the 1-based line, which editors show

    def where(self) -> str:
        return f"{self.file}, row {self.index}" + (f" (line {self.line})" if self.line is not None else "")


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
