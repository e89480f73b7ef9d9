"""How sure the report is: its intervals against an independent computation (scipy, here only), the
paired test on known answers, the per-question grades the evaluation records and the report reads
back, the verdict they decide, the sample answers, and the machine each evaluation records."""

from __future__ import annotations

import csv
import json
import math
import re

import matplotlib.image
import numpy as np
import pytest
from matplotlib.colors import to_rgb

from shadowft.evaluation.benchmarks import Headline, Scoring
from shadowft.evaluation.results import CORRECT, EvaluationError, grade_answers, verdicts
from shadowft.evaluation.spec import BenchmarkSpec, token_accuracy
from shadowft.report import pair_tables, summarize
from shadowft.report.figures import plot_claim
from shadowft.report.palette import KIND_COLOURS, ROLE_COLOURS, shadow_colour, variant_colour
from shadowft.report.samples import chosen, write_samples
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


def write_run(root, variant, answers, golds, credit=True, benchmark="task"):
    """An evaluation of one variant on a custom benchmark as the workflow writes it: scores.csv, and
    predictions.json with each answer graded."""
    folder = root / variant / benchmark
    folder.mkdir(parents=True)
    predictions = predictions_of(answers, golds, benchmark)
    share = 100 * sum(a == g for a, g in zip(answers, golds, strict=True)) / len(golds)
    rows = [{"benchmark": benchmark, "dataset": benchmark, "metric": "exact_match", "score": share}]
    rows = [{**row, "num_examples": len(golds)} for row in rows]
    spec = custom_spec(benchmark, partial_credit="token_accuracy" if credit else None)
    rows = grade_answers(spec, rows, predictions)
    lines = ["benchmark,dataset,metric,score,num_examples"]
    lines += [f"{benchmark},{benchmark},{row['metric']},{row['score']!r},{row['num_examples']}" for row in rows]
    (folder / "scores.csv").write_text("\n".join(lines) + "\n")
    (folder / "predictions.json").write_text(json.dumps(predictions))
    return folder / "scores.csv"


RUN = "sft-full-lr1e-3-s0"
GOLDS = ["b c"] * 40


def record(path, variant, benchmark="task"):
    """The workflow's record of one evaluation of the fixture's pair p (one full run, seed 0)."""
    run = {"stage": "sft", "tuning": "full", "learning_rate": 1e-3, "lora_rank": None, "seed": 0}
    dimensions = run if "/" in variant else dict.fromkeys(run)
    alpha = 1.0 if variant.endswith("shadow_a1") else None
    return {"pair": "p", "variant": variant, "benchmark": benchmark, "scores": path, **dimensions, "alpha": alpha}


def test_paired_differences_on_the_same_questions(tmp_path):
    """Instruct right on 30 of 40, Instruct + Full on 12, the graft on 20: the graft and the baseline
    disagree on 10 questions the graft got right and 2 it got wrong, so McNemar's p is 158/4096."""
    right = {
        "instruct": range(30),
        f"{RUN}/instruct_ft": range(10, 22),
        f"{RUN}/shadow_a1": [*range(0, 10), *range(12, 22)],
    }
    records = []
    for variant, correct in right.items():
        answers = ["b c" if i in correct else "b x" for i in range(40)]
        records.append(record(write_run(tmp_path / "runs", variant, answers, GOLDS), variant))
    scoring = Scoring(
        headlines={"task": Headline("exact_match", proportion=True)}, partial_credit={"task": "token_accuracy"}
    )

    summarize(records, tmp_path / "s.csv", tmp_path / "s.md", out_paired=tmp_path / "paired.csv", scoring=scoring)

    paired = {(row["variant"], row["against"], row["column"]): row for row in _csv(tmp_path / "paired.csv")}
    graft = paired[f"{RUN}/shadow_a1", f"{RUN}/instruct_ft", "task"]
    assert float(graft["difference"]) == pytest.approx(20.0) and graft["test"] == "McNemar exact"
    assert float(graft["p_value"]) == pytest.approx(158 / 4096) and graft["n"] == "40"
    assert float(graft["ci_low"]) > 0, "10 against 2 discordant answers: the interval leaves 0 out"
    credit = paired[f"{RUN}/shadow_a1", f"{RUN}/instruct_ft", "task (token_accuracy)"]
    assert credit["test"] == "paired bootstrap" and float(credit["difference"]) == pytest.approx(10.0)
    summary = {(row["variant"], row["metric"]): row for row in _csv(tmp_path / "s.csv")}
    low, high = wilson(30, 40)
    assert summary["instruct", "exact_match"]["interval"] == "Wilson"
    assert (
        float(summary["instruct", "exact_match"]["ci_low"]),
        float(summary["instruct", "exact_match"]["ci_high"]),
    ) == pytest.approx((100 * low, 100 * high))
    assert summary["instruct", "token_accuracy"]["interval"] == "bootstrap"


def test_without_grades_a_share_of_questions_still_has_wilsons_interval(tmp_path):
    path = write_run(tmp_path, "instruct", ["b c"] * 3 + ["x"] * 37, GOLDS, credit=False)
    (path.parent / "predictions.json").unlink()
    scoring = Scoring(headlines={"task": Headline("exact_match", proportion=True)})

    frame = summarize([record(path, "instruct")], tmp_path / "s.csv", tmp_path / "s.md", scoring=scoring)

    low, high = wilson(3, 40)
    assert frame[["ci_low", "ci_high"]].iloc[0].tolist() == pytest.approx([100 * low, 100 * high])
    assert f"7.5 [{100 * low:.1f}, {100 * high:.1f}]" in (tmp_path / "s.md").read_text()


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_the_verdict_is_decided_by_the_intervals(tmp_path):
    """Tuning Instruct loses the skills (retention), the graft keeps them but does not gain the task."""
    rows = {
        # variant: (questions right of 40 on retention, on the task)
        "instruct": (38, 0),
        f"{RUN}/instruct_ft": (2, 40),
        f"{RUN}/shadow_a1": (37, 0),
    }
    records = []
    for variant, (kept, learned) in rows.items():
        for benchmark, right in (("skills", kept), ("task", learned)):
            answers = ["b c" if i < right else "x" for i in range(40)]
            path = write_run(tmp_path, variant, answers, GOLDS, credit=False, benchmark=benchmark)
            records.append(record(path, variant, benchmark))
    scoring = Scoring(
        headlines={name: Headline("exact_match", proportion=True) for name in ("skills", "task")},
        roles={"skills": "retention", "task": "task"},
    )

    summarize(records, tmp_path / "s.csv", tmp_path / "s.md", out_rst=tmp_path / "v.rst", scoring=scoring)

    markdown = (tmp_path / "s.md").read_text()
    verdict = markdown.split("## Glossary")[0]
    assert (
        "tuning INSTRUCT directly costs its skills: REPRODUCED (Instruct + Full − Instruct on skills (retention): −90.0"
        in verdict
    )
    assert "the graft keeps them and gains the task: NOT REPRODUCED (" in verdict
    assert "on task (task): +0.0 [+0.0, +0.0], p = 1.000, against the claim" in verdict
    assert "No Average: the benchmarks measure different roles" in markdown
    assert "| Average" not in markdown
    rst = (tmp_path / "v.rst").read_text()
    assert rst.startswith("Verdict\n-------\n") and "REPRODUCED" in rst and "Glossary\n--------" in rst


def test_the_claim_figure_needs_both_roles_and_draws_the_grafts_path(tmp_path):
    """Instruct, Instruct + Full and the graft at alpha 0.5 and 1 on a task and a retention benchmark."""
    rows = {
        "instruct": (38, 0),
        f"{RUN}/instruct_ft": (2, 40),
        f"{RUN}/shadow_a0.5": (30, 10),
        f"{RUN}/shadow_a1": (37, 20),
    }
    records = []
    for variant, (kept, learned) in rows.items():
        for benchmark, right in (("skills", kept), ("task", learned)):
            answers = ["b c" if i < right else "x" for i in range(40)]
            path = write_run(tmp_path, variant, answers, GOLDS, benchmark=benchmark)
            alpha = float(variant.rsplit("_a", 1)[1]) if "shadow" in variant else None
            records.append({**record(path, variant, benchmark), "alpha": alpha})
    roles = {"skills": "retention", "task": "task"}
    scoring = Scoring(
        headlines={name: Headline("exact_match", proportion=True) for name in roles},
        partial_credit=dict.fromkeys(roles, "token_accuracy"),
        roles=roles,
    )
    frame = summarize(records, tmp_path / "s.csv", tmp_path / "s.md", scoring=scoring)
    tables = pair_tables(frame, "p", scoring)

    # Two panels: the scores, and the partial credit both benchmarks declare.
    pixels = matplotlib.image.imread(plot_claim(tables, tmp_path / "claim.png", scoring))
    assert pixels.shape[1] > pixels.shape[0] > 400
    vermilion = np.array(to_rgb(KIND_COLOURS["shadow"]))
    assert (np.abs(pixels[..., :3] - vermilion).max(axis=-1) < 0.02).sum() > 50, "the paper's graft is drawn"
    with pytest.raises(ValueError, match="needs a benchmark of role task and one of role retention"):
        plot_claim(tables, tmp_path / "none.png", Scoring(headlines=scoring.headlines))
    assert not (tmp_path / "none.png").exists()


def test_one_colour_per_variant_and_the_papers_graft_strongest():
    kinds = ("base", "instruct", "instruct_ft", "base_ft", "shadow")
    assert len({variant_colour(kind, 1.0, [0.5, 1.0]) for kind in kinds}) == len(kinds)
    assert ROLE_COLOURS == {"base": KIND_COLOURS["base_ft"], "instruct": KIND_COLOURS["instruct_ft"]}
    alphas = [0.25, 0.5, 1.0, 1.5]
    shades = [sum(shadow_colour(alpha, alphas)) for alpha in alphas]
    assert shadow_colour(1.0, alphas) == to_rgb(KIND_COLOURS["shadow"])
    assert shades[0] > shades[1] > shades[2] > shades[3], "paler below alpha 1, darker above"


# --- The answers behind the scores --------------------------------------------------------------


def test_samples_show_the_same_questions_for_every_variant(tmp_path):
    paths = {}
    for variant, answer in (("instruct", "b c"), (f"{RUN}/shadow_a1", "b x")):
        paths[variant] = write_run(tmp_path / "eval", variant, [answer] * 40, GOLDS).with_name("predictions.json")
    out = tmp_path / "samples"

    write_samples("p", "task", paths, out / "task.md", out / "task.html")

    markdown = (out / "task.md").read_text()
    picked = chosen("task", 40)
    assert picked == chosen("task", 40) and len(picked) == 10 and picked == sorted(picked)
    assert [int(n) - 1 for n in re.findall(r"## Question (\d+) of 40", markdown)] == picked
    assert markdown.count("| Instruct | b c | yes | 100% |") == 10
    assert markdown.count("| Shadow-Full (α=1) | b x | no | 50% |") == 10
    assert "[Instruct](../eval/instruct/task/predictions.json)" in markdown
    assert '<a href="../eval/instruct/task/predictions.json">Instruct</a>' in (out / "task.html").read_text()


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


def test_the_cpu_model_and_its_vector_extensions_are_read_from_cpuinfo(tmp_path, monkeypatch):
    import shadowft.versions as versions

    cpuinfo = tmp_path / "cpuinfo"
    first = "processor\t: 0\nmodel name\t: Example Xeon\nflags\t\t: fpu sse2 avx2 avx512f\n"
    cpuinfo.write_text(first + "\nprocessor\t: 1\nmodel name\t: Another\nflags\t\t: fpu\n")
    monkeypatch.setattr(versions, "_CPUINFO", cpuinfo)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    here = Hardware.here()
    assert (here.cpu, here.avx2, here.avx512, here.omp_num_threads) == ("Example Xeon", True, True, "3")
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Older\nflags\t\t: fpu sse2 avx2\n")
    assert (Hardware.here().avx2, Hardware.here().avx512) == (True, False)
    monkeypatch.setattr(versions, "_CPUINFO", tmp_path / "absent")  # not Linux: not known, not "no"
    assert (Hardware.here().avx2, Hardware.here().avx512) == (None, None)
    assert "AVX2 unknown, AVX-512 unknown" in Hardware.here().described
