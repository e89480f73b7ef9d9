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

`shadowft.data.rows` reads a data file's rows, `shadowft.data.checks` says what LLaMA-Factory
would reject, `shadowft.data.sampling` holds the sampling rule; this module prepares the folder
(`prepare_dataset`).

Runs in the train environment (pyarrow reads parquet; imported where a parquet file is read)
and in the core one for JSON files: the top level imports only the standard library.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowft.data.checks import (
    FORMATS,
    MAX_ERRORS,
    SHAREGPT_MESSAGES,
    SHAREGPT_STYLES,
    RowChecker,
    SharegptTags,
    check_alpaca,
    check_rows,
    check_sharegpt,
    sharegpt_style,
)
from shadowft.data.rows import DATA_SUFFIXES, DatasetFormatError, Row, count_rows, read_rows
from shadowft.data.sampling import SAMPLE_RULE, sample_key, sample_rows, valid_rows
from shadowft.io import atomic_directory, atomic_write_json, atomic_write_text, sha256_file
from shadowft.engine.layout import DATASET_MANIFEST, MODEL_MANIFEST


ROWS_FILE = "train.jsonl"
DATASET_INFO = "dataset_info.json"
SHAREGPT_COLUMNS = (SHAREGPT_MESSAGES, "system")
ALPACA_COLUMNS = ("instruction", "input", "output", "system", "history")


@dataclass(frozen=True)
class ChosenRows:
    """The rows a preparation keeps, in (file, row) order, and how they were chosen."""

    rows: list[Row]
    # {file: sorted row indices}, or {file: None} for every row of it
    selected: dict[str, list[int] | None]
    skipped: list[dict]  # with invalid_rows skip: {"row": where, "problems": [...]} per row left out
    tags: SharegptTags | None  # the sharegpt turn style (None for alpaca)


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
    record, files = _source_files(spec, Path(source))
    if not files:
        raise ValueError(f"dataset {name}: {source} holds no data file ({', '.join(DATA_SUFFIXES)})")
    counts = {label: count_rows(path) for label, path in files}
    for entry in record["files"]:
        entry["rows"] = counts[entry["path"]]
    chosen = _choose_rows(spec, files, counts, format)
    kept = [_kept_values(row, format) for row in chosen.rows]
    present = sorted({key for values in kept for key in values})
    info = dataset_info(name, format, chosen.tags, present)
    with atomic_directory(Path(dest)) as tmp:
        lines = (json.dumps(values, ensure_ascii=False, sort_keys=True) + "\n" for values in kept)
        atomic_write_text(tmp / ROWS_FILE, "".join(lines))
        atomic_write_json(tmp / DATASET_INFO, info)
        manifest = {
            "kind": "dataset",
            "name": name,
            "format": format,
            "source": record,
            "sample": _sample_record(spec, chosen.selected),
            "invalid_rows": spec.get("invalid_rows", "error"),
            "skipped": chosen.skipped,
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


def _choose_rows(
    spec: Mapping[str, Any], files: list[tuple[str, Path]], counts: Mapping[str, int], format: str
) -> ChosenRows:
    """The rows the spec's sample and `invalid_rows` keep, checked; `files` are (label, path) as sampling names them."""
    columns = SHAREGPT_COLUMNS if format == "sharegpt" else ALPACA_COLUMNS
    labels = dict(files)
    sample = spec.get("sample")

    def read(wanted: Mapping[str, list[int] | None]) -> Iterator[Row]:
        for label, indices in wanted.items():
            yield from read_rows(labels[label], _shown(labels[label], label, spec), columns, indices)

    if spec.get("invalid_rows", "error") != "skip":
        selected = (
            dict.fromkeys(sorted(labels))
            if sample is None
            else sample_rows(counts, sample["count"], sample.get("seed", 0))
        )
        rows = list(read(selected))
        return ChosenRows(rows, selected, [], check_rows(rows, format))
    rows, skipped, tags = valid_rows(read, counts, format, sample)
    shown_to_label = {_shown(path, label, spec): label for label, path in files}
    by_label: dict[str, list[int]] = {}
    for row in rows:
        by_label.setdefault(shown_to_label[row.file], []).append(row.index)
    rows.sort(key=lambda row: (shown_to_label[row.file], row.index))
    return ChosenRows(rows, {label: sorted(indices) for label, indices in sorted(by_label.items())}, skipped, tags)


def _sample_record(spec: Mapping[str, Any], selected: Mapping[str, list[int] | None]) -> dict | None:
    """The manifest's account of the sample: its rule, count, seed and the rows it selected (None: every row)."""
    sample = spec.get("sample")
    if sample is None:
        return None
    skip = spec.get("invalid_rows", "error") == "skip"
    return {
        "rule": SAMPLE_RULE + (", among the rows that pass the checks" if skip else ""),
        "count": sample["count"],
        "seed": sample.get("seed", 0),
        "selected": selected,
    }


def _shown(path: Path, label: str, spec: Mapping[str, Any]) -> str:
    """How errors name a file: the local path as configured, or the repository path of a download."""
    if spec["source"] == "hub":
        return f"{spec['repo']}@{spec['revision']}:{label}"
    return str(spec.get("file", path))
