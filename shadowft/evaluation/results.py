"""What one OpenCompass run scored: its results and predictions collected and checked, and the tidy scores.csv.

``scores.csv`` has the columns `SCORES_COLUMNS` (scores in percent, as OpenCompass reports
them); ``predictions.json`` beside it holds what the model answered, per dataset. Standard
library only: the report reads scores.csv in the core environment (`read_scores`, the plain
reader of the format `write_scores` writes).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from shadowft.evaluation.models import MODEL_ABBR
from shadowft.io import atomic_write_text

SCORES_COLUMNS = ("benchmark", "dataset", "metric", "score", "num_examples")
PREDICTIONS_FILE = "predictions.json"


class EvaluationError(RuntimeError):
    """OpenCompass did not score every dataset; the message says which and where to read why."""


def collect_results(
    run_dir: Path,
    benchmark: str,
    dataset_abbrs: list[str],
    *,
    log_path: Path | None = None,
    metric_names: dict[str, str] | None = None,
) -> tuple[list[dict], dict]:
    """The scores rows and the predictions (by dataset) of one OpenCompass run folder.

    OpenCompass exits 0 even when a task failed, so every dataset's results JSON must exist,
    hold no ``error`` and hold at least one numeric metric, and its predictions must exist;
    otherwise EvaluationError names the dataset and the log to read. ``metric_names`` maps
    the results keys to report to the names they get; None reports every numeric key as is.
    """
    run_dir = Path(run_dir)
    hint = f"read {log_path or run_dir / 'logs'}"
    rows, predictions = [], {}
    for abbr in dataset_abbrs:
        results_path = run_dir / "results" / MODEL_ABBR / f"{abbr}.json"
        results = _read_run_json(results_path, f"benchmark {benchmark}: the results of dataset {abbr}", hint)
        if "error" in results:
            raise EvaluationError(
                f"benchmark {benchmark}: OpenCompass could not score dataset {abbr}: {results['error']}; {hint}"
            )
        scores = {key: value for key, value in results.items() if _is_number(value)}
        if metric_names is not None:
            absent = sorted(metric_names.keys() - scores.keys())
            if absent:
                raise EvaluationError(
                    f"benchmark {benchmark}: dataset {abbr} has no {', '.join(absent)} in {results_path}; {hint}"
                )
            scores = {metric_names[key]: scores[key] for key in metric_names}
        if not scores:
            raise EvaluationError(
                f"benchmark {benchmark}: dataset {abbr} has no numeric score in {results_path}; {hint}"
            )
        predictions_path = run_dir / "predictions" / MODEL_ABBR / f"{abbr}.json"
        predictions[abbr] = _read_run_json(
            predictions_path, f"benchmark {benchmark}: the predictions of dataset {abbr}", hint
        )
        rows.extend(
            {
                "benchmark": benchmark,
                "dataset": abbr,
                "metric": metric,
                "score": float(score),
                "num_examples": len(predictions[abbr]),
            }
            for metric, score in scores.items()
        )
    return rows, predictions


def write_scores(rows: list[dict], path: Path) -> None:
    """Write scores rows as a tidy CSV (SCORES_COLUMNS), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SCORES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: row[column] for column in SCORES_COLUMNS} for row in rows)
    atomic_write_text(Path(path), buffer.getvalue())


def read_scores(path: Path) -> list[dict]:
    """Read a scores.csv: one dict per row, score a float, num_examples an int (stdlib only)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != SCORES_COLUMNS:
            raise ValueError(f"{path}: columns are {reader.fieldnames}, expected {list(SCORES_COLUMNS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append({**row, "score": float(row["score"]), "num_examples": int(row["num_examples"])})
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}, line {line}: score must be a number and num_examples an integer: {row}"
                ) from None
    return rows


def _read_run_json(path: Path, what: str, hint: str) -> dict:
    if not path.is_file():
        raise EvaluationError(f"{what}: OpenCompass wrote no {path}; {hint}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{what}: {path} is not JSON ({error}); {hint}") from None
    if not isinstance(value, dict):
        raise EvaluationError(f"{what}: {path} is not a JSON object; {hint}")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
