"""How sure a score is: the 95% intervals and paired tests of the report, numpy only.

A score is a mean over questions (of each dataset's mean, for a benchmark of several datasets,
unweighted as the authors' summarizer takes it). Where each question scores 0 or 1 and the score
is one dataset's, its interval is Wilson's (`wilson`), from the score and the number of questions
alone; otherwise the questions are resampled with replacement, each dataset within itself
(`resampled_means`), and the interval is the resamples' 2.5th and 97.5th percentiles
(`percentile_interval`). Two variants answered the same questions, so their difference is tested
on the questions as pairs: by McNemar's exact test on the questions only one of them got right
(`mcnemar_exact`, for one dataset scored 0 or 1), else by the paired resamples
(`paired_resampled_differences`, `bootstrap_p`), whose percentiles are also the difference's
interval in both cases. Resampling draws from a generator seeded by what is resampled
(`generator`), so the same scores give the same intervals in every job that computes them.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95
# The normal quantile of a two-sided 95% interval (scipy.stats.norm.ppf(0.975)).
Z = 1.959963984540054
# Resamples per interval: the 2.5th percentile of 2000 rests on 50 of them.
RESAMPLES = 2000
# Questions resampled per block of resamples, so that memory stays bounded for large benchmarks.
_BLOCK = 2_000_000


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson's score interval of a share of `successes` in `n` trials, as shares (0 to 1)."""
    if n <= 0 or not 0 <= successes <= n:
        raise ValueError(f"wilson: {successes} successes in {n} trials")
    share = successes / n
    centre = share + z * z / (2 * n)
    spread = z * math.sqrt(share * (1 - share) / n + z * z / (4 * n * n))
    scale = 1 + z * z / n
    # At 0 or n successes the bound is 0 or 1 exactly; the formula leaves rounding noise there.
    low = 0.0 if successes == 0 else (centre - spread) / scale
    high = 1.0 if successes == n else (centre + spread) / scale
    return low, high


def count_of(share: float, n: int) -> int | None:
    """The number of questions right behind a share of n (0 to 1), or None where share * n is not
    a whole number: then the score is not a share of questions scored 0 or 1."""
    if n <= 0 or math.isnan(share):
        return None
    count = share * n
    whole = round(count)
    return int(whole) if abs(count - whole) <= 1e-6 * max(1.0, count) and 0 <= whole <= n else None


def generator(*key: object) -> np.random.Generator:
    """A generator seeded by `key` (the pair, the variant, the column...): the same draws wherever
    the same thing is resampled, whatever else a job computes first."""
    digest = hashlib.sha256("\x1f".join(map(str, key)).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _is_binary(values: np.ndarray) -> bool:
    return bool(np.isin(values, (0.0, 1.0)).all())


def resampled_means(strata: Sequence[np.ndarray], rng: np.random.Generator, resamples: int = RESAMPLES) -> np.ndarray:
    """`resamples` bootstrap replicates of the unweighted mean over `strata` of each stratum's mean,
    every stratum (a dataset's per-question values) resampled with replacement within itself.

    A stratum of 0s and 1s is drawn as the binomial count it is (the same distribution, without
    drawing each question)."""
    if not strata or any(len(values) == 0 for values in strata):
        raise ValueError("resampled_means: every stratum needs questions")
    total = np.zeros(resamples)
    for values in strata:
        values = np.asarray(values, dtype=float)
        n = len(values)
        if _is_binary(values):
            total += rng.binomial(n, values.mean(), size=resamples) / n
        else:
            total += _resampled_block_means(values, rng, resamples)
    return total / len(strata)


def paired_resampled_differences(
    strata: Sequence[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator, resamples: int = RESAMPLES
) -> np.ndarray:
    """Bootstrap replicates of mean(a) - mean(b) (unweighted over strata), the questions resampled as
    pairs: each resample keeps a question's two answers together. For 0/1 values the four kinds of
    pair (both right, only a, only b, neither) are drawn as the multinomial counts they are."""
    if not strata:
        raise ValueError("paired_resampled_differences: no strata")
    total = np.zeros(resamples)
    for a, b in strata:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if len(a) != len(b) or len(a) == 0:
            raise ValueError(f"paired_resampled_differences: {len(a)} and {len(b)} questions do not pair")
        n = len(a)
        if _is_binary(a) and _is_binary(b):
            cells = np.array([np.sum((a == 1) & (b == 0)), np.sum((a == 0) & (b == 1)), 0])
            cells[2] = n - cells[0] - cells[1]
            drawn = rng.multinomial(n, cells / n, size=resamples)
            total += (drawn[:, 0] - drawn[:, 1]) / n
        else:
            total += _resampled_block_means(a - b, rng, resamples)
    return total / len(strata)


def _resampled_block_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    n = len(values)
    means = np.empty(resamples)
    step = max(1, _BLOCK // n)
    for start in range(0, resamples, step):
        stop = min(resamples, start + step)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    return means


def percentile_interval(replicates: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The central `level` interval of bootstrap replicates (the percentile bootstrap)."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return float(low), float(high)


def bootstrap_p(replicates: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from replicates of a difference: twice the share of
    replicates on the far side of 0, the smallest level whose percentile interval leaves 0 out
    (at least 1 / resamples, so a p-value is never said to be 0)."""
    below, above = np.mean(replicates <= 0), np.mean(replicates >= 0)
    return float(min(1.0, max(2 * min(below, above), 1 / len(replicates))))


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """McNemar's exact two-sided p-value: the binomial test of the discordant pairs (questions one of
    two variants got right and the other wrong) against an even split."""
    n = only_first + only_second
    if n == 0:
        return 1.0
    # Whole numbers throughout, divided once: Python's division of integers rounds correctly however
    # large they are, where floats would overflow for a few thousand discordant pairs. Each binomial
    # coefficient follows from the one before (C(n, k+1) = C(n, k) (n - k) / (k + 1), exactly).
    term, total = 1, 1
    for k in range(min(only_first, only_second)):
        term = term * (n - k) // (k + 1)
        total += term
    return min(1.0, 2 * total / 2**n)
