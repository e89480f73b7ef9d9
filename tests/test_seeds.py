"""The seed table: how far the scores of one experiment run with several seeds lie apart."""

import math

import pytest

from shadowft.report.__main__ import main as report_main
from shadowft.report.seeds import render_seed_spread, seed_spread


def write_summary(path, scores, metric="exact_match"):
    rows = ["pair,variant,tuning,alpha,benchmark,dataset,metric,score,num_examples"]
    rows += [
        f"demo,{variant},,,{benchmark},{benchmark},{metric},{score},200"
        for (variant, benchmark), score in scores.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows) + "\n")
    return path


def test_seed_spread_is_max_minus_min_per_variant_and_benchmark(tmp_path, capsys):
    runs = {
        0: {
            ("base", "demo_task"): 0.0,
            ("sft-lora-lr3e-3-r8-s0/shadow_a1", "demo_task"): 88.0,
            ("sft-lora-lr3e-3-r8-s0/shadow_a1", "demo_chat"): 10.5,
        },
        1: {
            ("base", "demo_task"): 0.0,
            ("sft-lora-lr3e-3-r8-s1/shadow_a1", "demo_task"): 51.0,
            ("sft-lora-lr3e-3-r8-s1/shadow_a1", "demo_chat"): 12.0,
        },
        5: {
            ("base", "demo_task"): 1.0,
            ("sft-lora-lr3e-3-r8-s5/shadow_a1", "demo_task"): 70.0,
            ("sft-lora-lr3e-3-r8-s5/shadow_a1", "demo_chat"): 9.0,
        },
    }
    paths = {
        seed: write_summary(tmp_path / f"s{seed}" / "results" / "summary.csv", scores) for seed, scores in runs.items()
    }
    table = seed_spread(paths)
    assert list(table.columns) == [0, 1, 5, "mean", "min", "max", "spread", "sd", "sampling sd"]
    mean = 209 / 3
    sd = math.sqrt(((88 - mean) ** 2 + (51 - mean) ** 2 + (70 - mean) ** 2) / 2)
    # The binomial variance of a share of 200 questions, averaged over the seeds.
    sampling_sd = 100 * math.sqrt((0.88 * 0.12 + 0.51 * 0.49 + 0.70 * 0.30) / 3 / 200)
    assert table.loc[("demo", "Shadow-LoRA (α=1)", "demo_task")].tolist() == pytest.approx(
        [88.0, 51.0, 70.0, mean, 51.0, 88.0, 37.0, sd, sampling_sd], rel=1e-12
    )
    assert table.loc[("demo", "Shadow-LoRA (α=1)", "demo_chat"), "spread"] == 3.0
    assert table.loc[("demo", "Base", "demo_task"), "spread"] == 1.0
    assert table.loc[("demo", "Base", "demo_task"), "sampling sd"] == pytest.approx(
        100 * math.sqrt(0.01 * 0.99 / 3 / 200)
    )

    report_main(["seeds", *(f"{seed}={tmp_path / f's{seed}'}" for seed in runs)])
    printed = capsys.readouterr().out
    cells = f"88.0 | 51.0 | 70.0 | 69.7 | 51.0 | 88.0 | 37.0 | {sd:.1f} | {sampling_sd:.1f}"
    row = f"| demo | Shadow-LoRA (α=1) | demo_task | {cells} |"
    assert row in printed


def test_sampling_sd_is_unknown_where_a_score_is_no_share_of_questions(tmp_path):
    runs = {seed: {("base", "gsm8k"): 10.0 + seed} for seed in (0, 1)}
    paths = {seed: write_summary(tmp_path / f"s{seed}.csv", scores, "score") for seed, scores in runs.items()}
    table = seed_spread(paths)
    assert math.isnan(table.loc[("demo", "Base", "gsm8k"), "sampling sd"])
    assert table.loc[("demo", "Base", "gsm8k"), "sd"] == pytest.approx(math.sqrt(0.5))
    assert (
        render_seed_spread(table).splitlines()[-1]
        == "| demo | Base | gsm8k | 10.0 | 11.0 | 10.5 | 10.0 | 11.0 | 1.0 | 0.7 | - |"
    )


def test_seed_spread_refuses_runs_that_differ(tmp_path):
    first = write_summary(tmp_path / "a.csv", {("base", "demo_task"): 0.0})
    second = write_summary(tmp_path / "b.csv", {("base", "demo_chat"): 0.0})
    with pytest.raises(ValueError, match="seed 1"):
        seed_spread({0: first, 1: second})
