"""Each number of a table with its uncertainty: a run's score in a column with its questions and
95% interval (`Estimate`), and the difference between two runs on the same questions with its
interval and p-value (`Difference`), made by ``shadowft.report.stats``'s rules.

`measure` takes a benchmark's datasets as scores.csv states them (`Part`: the score, the number of
questions and, where predictions.json holds them and they reproduce the score, each question's
value); `combine` makes a group's mean or the Average from its benchmarks (their resamples
weighted as the column weights them: the benchmarks' questions are resampled independently);
`compare` pairs two runs question by question, `combine_differences` does the same for a group or
the Average. What cannot be resampled (no per-question values, and a score that is no share of
questions) has no interval, and says so (`NOT_AVAILABLE`) rather than getting one made up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from shadowft.report.stats import (
    bootstrap_p,
    count_of,
    generator,
    mcnemar_exact,
    paired_resampled_differences,
    percentile_interval,
    resampled_means,
    wilson,
)

WILSON = "Wilson"
BOOTSTRAP = "bootstrap"
MCNEMAR = "McNemar exact"
PAIRED_BOOTSTRAP = "paired bootstrap"
NOT_AVAILABLE = "not available"


@dataclass(frozen=True)
class Part:
    """One dataset of a benchmark for one run: its score (percent), its questions, and each question's
    value from 0 to 1 where they are known (None otherwise)."""

    score: float
    questions: int
    values: np.ndarray | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Estimate:
    """A run's number in one column (percent), the questions behind it, and its 95% interval with the
    method that made it (`WILSON`, `BOOTSTRAP`; `NOT_AVAILABLE`: low and high are None)."""

    value: float
    questions: int | None
    low: float | None = None
    high: float | None = None
    method: str = NOT_AVAILABLE


@dataclass(frozen=True)
class Difference:
    """One run's number minus another's on the same questions (points), its 95% interval, and the
    p-value of "no difference" with the test that gave it (`MCNEMAR`, `PAIRED_BOOTSTRAP`;
    `NOT_AVAILABLE`: the interval and p-value are None)."""

    value: float
    questions: int | None
    low: float | None = None
    high: float | None = None
    p_value: float | None = None
    test: str = NOT_AVAILABLE


@dataclass(frozen=True, eq=False)
class Measured:
    """An estimate and what pairing and combining it need: each dataset's per-question values
    (None: unknown) and the bootstrap replicates of the number (None: it cannot be resampled)."""

    estimate: Estimate
    strata: tuple[np.ndarray, ...] | None = None
    replicates: np.ndarray | None = None
    # One dataset scored 0 or 1 per question: its difference from another run is McNemar's to test.
    one_binary_dataset: bool = False


@dataclass(frozen=True, eq=False)
class Paired:
    """A difference and its bootstrap replicates (None: it cannot be resampled)."""

    difference: Difference
    replicates: np.ndarray | None = None


def measure(key: tuple, parts: Sequence[Part], proportion: bool) -> Measured:
    """A benchmark's (or a secondary metric's) number for one run: the unweighted mean of its parts.

    `proportion`: each question scores 0 or 1 (the headline's rule says so), so a part without
    per-question values is its count of questions right, found from its score. One such part gets
    Wilson's interval, several a bootstrap resampling each part within itself; so do parts with
    per-question values. `key` seeds the resampling.
    """
    value = math.fsum(part.score for part in parts) / len(parts) if parts else math.nan
    questions = sum(part.questions for part in parts)
    known = tuple(part.values for part in parts) if all(part.values is not None for part in parts) else None
    strata = _strata(parts, proportion)
    if strata is None or math.isnan(value):
        return Measured(Estimate(value, questions), known)
    replicates = 100 * resampled_means(strata, generator(*key))
    one_binary = len(strata) == 1 and bool(np.isin(strata[0], (0.0, 1.0)).all())
    if one_binary:
        low, high = wilson(int(strata[0].sum()), len(strata[0]))
        estimate = Estimate(value, questions, 100 * low, 100 * high, WILSON)
    else:
        estimate = Estimate(value, questions, *percentile_interval(replicates), BOOTSTRAP)
    return Measured(estimate, known, replicates, one_binary and known is not None)


def _strata(parts: Sequence[Part], proportion: bool) -> tuple[np.ndarray, ...] | None:
    """Each part's questions as values to resample: its own, or for a share of questions its count of
    1s and 0s (the order of questions does not matter to a resampling of one run); None where a
    part has neither."""
    strata = []
    for part in parts:
        if part.values is not None:
            strata.append(np.asarray(part.values, dtype=float))
            continue
        count = count_of(part.score / 100, part.questions) if proportion else None
        if count is None:
            return None
        strata.append(np.repeat([1.0, 0.0], [count, part.questions - count]))
    return tuple(strata) or None


def combine(members: Mapping[str, Measured], weights: Mapping[str, float]) -> Measured:
    """A weighted sum of columns (a group's mean, the Average): its replicates the same sum of theirs,
    where every member has replicates."""
    value = math.fsum(weights[name] * members[name].estimate.value for name in weights)
    questions = sum(members[name].estimate.questions or 0 for name in weights) or None
    if any(members[name].replicates is None for name in weights) or math.isnan(value):
        return Measured(Estimate(value, questions))
    replicates = sum(weights[name] * members[name].replicates for name in weights)
    return Measured(Estimate(value, questions, *percentile_interval(replicates), BOOTSTRAP), None, replicates)


def compare(key: tuple, first: Measured, second: Measured) -> Paired:
    """`first` minus `second`, paired on their questions where both have per-question values."""
    value = first.estimate.value - second.estimate.value
    questions = first.estimate.questions
    if first.strata is None or second.strata is None or math.isnan(value):
        return Paired(Difference(value, questions))
    if [len(a) for a in first.strata] != [len(b) for b in second.strata]:
        raise ValueError(f"{key}: the two runs did not answer the same questions")
    pairs = list(zip(first.strata, second.strata, strict=True))
    replicates = 100 * paired_resampled_differences(pairs, generator(*key))
    low, high = percentile_interval(replicates)
    if first.one_binary_dataset and second.one_binary_dataset:
        a, b = first.strata[0], second.strata[0]
        p_value = mcnemar_exact(int(np.sum((a == 1) & (b == 0))), int(np.sum((a == 0) & (b == 1))))
        return Paired(Difference(value, questions, low, high, p_value, MCNEMAR), replicates)
    return Paired(Difference(value, questions, low, high, bootstrap_p(replicates), PAIRED_BOOTSTRAP), replicates)


def combine_differences(members: Mapping[str, Paired], weights: Mapping[str, float]) -> Paired:
    """A weighted sum of paired differences (a group's mean, the Average), resampled where every member is."""
    value = math.fsum(weights[name] * members[name].difference.value for name in weights)
    questions = sum(members[name].difference.questions or 0 for name in weights) or None
    if any(members[name].replicates is None for name in weights) or math.isnan(value):
        return Paired(Difference(value, questions))
    replicates = sum(weights[name] * members[name].replicates for name in weights)
    low, high = percentile_interval(replicates)
    return Paired(Difference(value, questions, low, high, bootstrap_p(replicates), PAIRED_BOOTSTRAP), replicates)
