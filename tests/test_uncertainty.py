"""How sure the report is: its intervals against an independent computation (scipy, here only) and
the paired test on known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

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


@pytest.fixture
def stats():
    """scipy.stats, the independent computation: a test tool of the core environment (envs/core.yaml)
    that the package never imports. Only the tests that compare with it skip without it."""
    return pytest.importorskip("scipy.stats", reason="scipy (envs/core.yaml's test tools) is not installed")


@pytest.mark.parametrize(("successes", "n"), [(0, 200), (1, 200), (100, 200), (137, 200), (200, 200), (3, 7)])
def test_wilson_interval_is_scipys(stats, successes, n):
    expected = stats.binomtest(successes, n).proportion_ci(confidence_level=0.95, method="wilson")
    assert wilson(successes, n) == pytest.approx((expected.low, expected.high), abs=1e-12)


def test_a_share_of_questions_has_a_count_and_other_scores_none():
    assert count_of(0.52, 200) == 104 and count_of(0.0, 200) == 0 and count_of(1.0, 7) == 7
    assert count_of(0.523, 200) is None and count_of(math.nan, 200) is None


@pytest.mark.parametrize(
    "values",
    [
        np.repeat([1.0, 0.0], [73, 127]),  # right or wrong: resampled as a binomial count
        np.random.default_rng(7).beta(0.6, 1.4, size=300),  # partial credit: resampled question by question
    ],
    ids=["binary", "credit"],
)
def test_bootstrap_interval_is_scipys(stats, values):
    ours = percentile_interval(resampled_means([values], generator("test"), resamples=20_000))
    theirs = stats.bootstrap(
        (values,), np.mean, n_resamples=20_000, method="percentile", rng=np.random.default_rng(1)
    ).confidence_interval
    # Two bootstraps of 20,000 resamples agree to well under a tenth of the interval's width.
    assert ours == pytest.approx((theirs.low, theirs.high), abs=0.08 * (theirs.high - theirs.low))


def test_paired_bootstrap_is_scipys(stats):
    rng = np.random.default_rng(3)
    first = (rng.random(250) < 0.6).astype(float)
    second = np.where(rng.random(250) < 0.8, first, 1.0 - first)  # mostly the same answers
    replicates = paired_resampled_differences([(first, second)], generator("paired"), resamples=20_000)
    theirs = stats.bootstrap(
        (first, second),
        lambda a, b, axis=-1: a.mean(axis=axis) - b.mean(axis=axis),
        paired=True,
        vectorized=True,
        n_resamples=20_000,
        method="percentile",
        rng=np.random.default_rng(2),
    ).confidence_interval
    width = theirs.high - theirs.low
    assert percentile_interval(replicates) == pytest.approx((theirs.low, theirs.high), abs=0.08 * width)


def test_several_datasets_resample_each_within_itself():
    # Two datasets, all right and all wrong: each resample keeps every dataset's mean, so the unweighted
    # mean never moves; pooled, the questions would give it an interval.
    strata = [np.ones(10), np.zeros(1000)]
    assert percentile_interval(resampled_means(strata, generator("strata"))) == (0.5, 0.5)


@pytest.mark.parametrize(
    ("only_first", "only_second", "p"),
    [
        (10, 2, 158 / 4096),  # 2 * (C(12,0) + C(12,1) + C(12,2)) / 2**12
        (2, 10, 158 / 4096),
        (5, 5, 1.0),
        (0, 0, 1.0),
        (6, 0, 2 / 64),
        (0, 1, 1.0),
    ],
)
def test_mcnemar_exact_known_answers(only_first, only_second, p):
    assert mcnemar_exact(only_first, only_second) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize(("only_first", "only_second"), [(10, 2), (2, 10), (7, 7), (0, 1), (31, 12)])
def test_mcnemar_exact_is_scipys_binomial_test(stats, only_first, only_second):
    expected = stats.binomtest(only_first, only_first + only_second).pvalue
    assert mcnemar_exact(only_first, only_second) == pytest.approx(expected, rel=1e-9)


def test_mcnemar_on_thousands_of_discordant_questions_does_not_overflow(stats):
    assert mcnemar_exact(5000, 5200) == pytest.approx(stats.binomtest(5000, 10200).pvalue, rel=1e-9)


def test_bootstrap_p_value_is_the_share_beyond_zero():
    assert bootstrap_p(np.array([1.0, 2.0, 3.0, -1.0])) == 0.5
    assert bootstrap_p(np.full(2000, 3.0)) == 1 / 2000, "never 0"
