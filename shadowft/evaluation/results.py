"""What one OpenCompass run scored: its results and predictions collected and checked, and the tidy scores.csv.

``scores.csv`` has the columns `SCORES_COLUMNS` (scores in percent, as OpenCompass reports
them); ``predictions.json`` beside it holds what the model answered, per dataset: OpenCompass's
predictions (``{dataset: {"0": {"origin_prompt", "prediction", "gold"}, ...}}``), each with its
grade where one is known (`CORRECT`: the evaluator's verdict on that question, from the details
OpenCompass records, or a custom benchmark's metric; a partial-credit metric's 0-to-1 credit
under its own name), so that the report can resample questions and pair variants on them.
Standard library only: the report reads both in the core environment (`read_scores`, the plain
reader of the format `write_scores` writes).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from shadowft.evaluation.models import MODEL_ABBR
from shadowft.evaluation.spec import GRADERS, PARTIAL_CREDIT, BenchmarkSpec
from shadowft.io import atomic_write_text

SCORES_COLUMNS = ("benchmark", "dataset", "metric", "score", "num_examples")
PREDICTIONS_FILE = "predictions.json"
# A prediction's verdict, true or false, where the evaluator gave one per question.
CORRECT = "correct"
# The keys under which OpenCompass's evaluators give a question's verdict in their details, in the
# order OpenCompass's own BaseEvaluator looks for them.
_VERDICT_KEYS = ("correct", "is_correct", "cascade_correct")


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
        given = verdicts(results.get("details"), len(predictions[abbr]))
        if given is not None:
            for entry, verdict in zip(in_order(predictions[abbr]), given, strict=True):
                entry[CORRECT] = verdict
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


def grade_answers(spec: BenchmarkSpec, rows: list[dict], predictions: dict) -> list[dict]:
    """A custom benchmark's answers graded one by one: each prediction gets its `CORRECT` verdict
    and, where the benchmark declares one, its partial credit (under the metric's name); the
    partial-credit score joins `rows`, after the metric's. The verdicts must reproduce
    OpenCompass's score exactly, or the grading here is not the evaluator's (EvaluationError)."""
    graded = []
    for row in rows:
        graded.append(row)
        entries = in_order(predictions[row["dataset"]])
        verdicts = [GRADERS[spec.metric](entry["prediction"], entry["gold"]) for entry in entries]
        regraded = 100 * math.fsum(verdicts) / len(verdicts) if verdicts else math.nan
        if not math.isclose(regraded, row["score"], rel_tol=1e-9, abs_tol=1e-9):
            raise EvaluationError(
                f"benchmark {spec.name}: dataset {row['dataset']} graded answer by answer scores {regraded}, "
                f"OpenCompass {row['score']}: the per-question grades would not be the score's"
            )
        for entry, verdict in zip(entries, verdicts, strict=True):
            entry[CORRECT] = verdict == 1.0
        if spec.partial_credit is not None:
            credit = [PARTIAL_CREDIT[spec.partial_credit](entry["prediction"], entry["gold"]) for entry in entries]
            for entry, value in zip(entries, credit, strict=True):
                entry[spec.partial_credit] = value
            score = 100 * math.fsum(credit) / len(credit) if credit else math.nan
            graded.append({**row, "metric": spec.partial_credit, "score": score})
    return graded


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


def in_order(predictions: dict) -> list[dict]:
    """One dataset's predictions in question order (OpenCompass keys them "0", "1", ...)."""
    return [predictions[key] for key in sorted(predictions, key=int)]


def verdicts(details, count: int) -> list[bool] | None:
    """Each question's verdict from an evaluator's details as OpenCompass writes them (a list of
    per-question entries, or a mapping of them by index beside its "type"), or None where the
    details hold no verdict for every question."""
    if isinstance(details, dict):
        details = [value for key, value in details.items() if key != "type"]
    if not isinstance(details, list) or len(details) != count:
        return None
    verdicts = []
    for entry in details:
        value = next((entry[key] for key in _VERDICT_KEYS if isinstance(entry, dict) and key in entry), None)
        # One sampling per question: OpenCompass's evaluator lists the verdict of each of the n samplings.
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, bool):
            return None
        verdicts.append(value)
    return verdicts


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
