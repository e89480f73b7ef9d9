"""What each variant answered, question by question: the grades that predictions.json records beside
each scores.csv (shadowft.evaluation.results: each prediction's `CORRECT` verdict, and a
partial-credit metric's credit under its name), as the arrays the report resamples and pairs.

A question's values are used only where their mean is the score scores.csv states for that dataset
and metric: what is resampled is then what was scored. Elsewhere (no predictions.json, no grade per
question, or grades that do not add up to the score) there are none, and the report says what that
leaves (Wilson's interval for a share of questions, else none).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from shadowft.evaluation.benchmarks import Scoring
from shadowft.evaluation.results import CORRECT, in_order
from shadowft.workflow.plan import predictions_path

# (pair, variant, benchmark, dataset, metric) -> each question's value, 0 to 1, in question order
Outcomes = dict[tuple[str, str, str, str, str], np.ndarray]


def predictions_beside(results: Path) -> Callable[[str, str, str], Path]:
    """Where an evaluation's predictions.json lies under `results` (the folder holding results/)."""
    return lambda pair, variant, benchmark: Path(results) / predictions_path(pair, variant, benchmark)


def question_values(predictions: Mapping[str, Mapping], metric: str, score: float) -> np.ndarray | None:
    """Each question's value of `metric` on one dataset: its credit where the predictions carry the
    metric by name, else its verdict (1 or 0); None where neither is there for every question or
    where their mean (in percent) is not `score`."""
    entries = in_order(predictions)
    if not entries:
        return None
    if all(isinstance(entry.get(metric), (int, float)) for entry in entries):
        values = np.array([float(entry[metric]) for entry in entries])
    elif all(isinstance(entry.get(CORRECT), bool) for entry in entries):
        values = np.array([1.0 if entry[CORRECT] else 0.0 for entry in entries])
    else:
        return None
    if not math.isclose(100 * float(values.mean()), score, rel_tol=1e-9, abs_tol=1e-6):
        return None
    return values


def read_outcomes(summary: pd.DataFrame, scoring: Scoring, locate: Callable[[str, str, str], Path]) -> Outcomes:
    """The per-question values of every score the report resamples: each benchmark's headline metric
    on each dataset its score keeps, and its partial-credit metric, for every evaluation of `summary`
    whose predictions.json `locate` finds. Each file is read once and only these arrays are kept."""
    outcomes: Outcomes = {}
    for (pair, variant, benchmark), rows in summary.groupby(["pair", "variant", "benchmark"], sort=False):
        path = locate(pair, variant, benchmark)
        if not path.is_file():
            continue
        scores = {(row.dataset, row.metric): float(row.score) for row in rows.itertuples(index=False)}
        try:
            wanted = set(scoring.headline(benchmark).kept(benchmark, scores))
        except ValueError:  # the tables name what is missing
            wanted = set()
        credit = scoring.partial_credit.get(benchmark)
        wanted |= {key for key in scores if key[1] == credit}
        predictions = json.loads(path.read_text(encoding="utf-8"))
        for dataset, metric in wanted:
            if dataset in predictions:
                values = question_values(predictions[dataset], metric, scores[dataset, metric])
                if values is not None:
                    outcomes[pair, variant, benchmark, dataset, metric] = values
    return outcomes
