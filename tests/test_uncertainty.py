"""How sure the report is: its intervals against an independent computation (scipy, here only), the
paired test on known answers, the per-question grades the evaluation records, and the machine each
evaluation records."""

from __future__ import annotations

import math

import numpy as np
import pytest

from shadowft.evaluation.results import CORRECT, EvaluationError, grade_answers, verdicts
from shadowft.evaluation.spec import BenchmarkSpec, token_accuracy
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
from shadowft.versions import Hardware, hardware_sentence


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


# --- The evaluation's grades, read back by the report ---------------------------------------------


def custom_spec(benchmark="task", **extra):
    return BenchmarkSpec.from_mapping({"name": benchmark, "kind": "custom", "path": "q.jsonl", **extra})


def predictions_of(answers, golds, benchmark="task"):
    pairs = enumerate(zip(answers, golds, strict=True))
    return {benchmark: {str(i): {"prediction": answer, "gold": gold} for i, (answer, gold) in pairs}}


def test_grades_reproduce_the_score_and_partial_credit_joins_it():
    predictions = predictions_of([" d b g c", "d b", "x"], ["d b g c", "d b g c", "a"])
    rows = [{"benchmark": "task", "dataset": "task", "metric": "exact_match", "score": 100 / 3, "num_examples": 3}]

    graded = grade_answers(custom_spec(partial_credit="token_accuracy"), rows, predictions)

    assert [entry[CORRECT] for entry in predictions["task"].values()] == [True, False, False]
    assert [entry["token_accuracy"] for entry in predictions["task"].values()] == [1.0, 0.5, 0.0]
    assert graded[1] == {**rows[0], "metric": "token_accuracy", "score": pytest.approx(50.0)}
    assert token_accuracy("e f x", "c f d g") == 0.25 and token_accuracy("", "") == 1.0
    with pytest.raises(EvaluationError, match="graded answer by answer scores 33.3.*OpenCompass 50.0"):
        grade_answers(custom_spec(), [{**rows[0], "score": 50.0}], predictions)


def test_an_evaluators_details_give_each_questions_verdict():
    # OpenCompass's BaseEvaluator lists each sampling's verdict per question; format_details keys them by index.
    assert verdicts([{"correct": [True]}, {"is_correct": [False]}, {"cascade_correct": True}], 3) == [True, False, True]
    assert verdicts({"type": "GEN", "0": {"correct": False}, "1": {"correct": True}}, 2) == [False, True]
    assert verdicts({"type": "GEN", "0": {"predictions": "x"}}, 1) is None, "no verdict: none made up"
    assert verdicts([{"correct": [True, False]}], 1) is None, "several samplings are no single verdict"
    assert verdicts([{"correct": True}], 2) is None


# --- Where the evaluations ran ------------------------------------------------------------------


def test_the_machine_is_recorded_and_read_back(tmp_path):
    here = Hardware.here()
    here.write(tmp_path / "hardware.json")

    assert Hardware.read(tmp_path / "hardware.json") == here
    assert here.logical_cpus and here.usable_cpus and 0 < here.usable_cpus <= here.logical_cpus
    assert "AVX2" in here.described and "AVX-512" in here.described and "OMP_NUM_THREADS" in here.described
    other = Hardware("Other CPU", "x86_64", True, False, 8, 8, "4", "0,1", ["NVIDIA H100", "NVIDIA H100"])
    assert "2 x NVIDIA H100 (CUDA_VISIBLE_DEVICES=0,1)" in other.described and "OMP_NUM_THREADS 4" in other.described
    sentence = hardware_sentence([here, here, other], "The evaluations ran on")
    assert sentence.startswith("The evaluations ran on 2 kinds of machine:") and "(2 of 3)" in sentence
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json: not a hardware record"):
        Hardware.read(tmp_path / "bad.json")
