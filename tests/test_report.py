"""The report on stored fixture results: typed records, the tidy CSV, the paper's tables
(Markdown and HTML, checked number by number against values computed here, with their intervals
and differences), every figure (decoded and looked at), and Snakemake's HTML report holding every
table and figure, with the verdict on its landing page."""

from __future__ import annotations

import base64
import html
import json
import math
import re
import statistics
import subprocess

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import ROOT, VENVS, snakemake

from shadowft.engine.overlap import COLUMNS as OVERLAP_COLUMNS
from shadowft.engine.overlap import MEASURES
from shadowft.evaluation.benchmarks import Headline, Scoring
from shadowft.report import ScoreRecord, figures, pair_tables, read_summary, summarize
from shadowft.report.overlap import RunOverlap, plot_overlap
from shadowft.report.records import SUMMARY_COLUMNS
from shadowft.report.stats import wilson
from shadowft.versions import TOOLS, EnvironmentVersions, Hardware, checkout_commit
from shadowft.workflow.sweep import Run, Variant, VariantKind

BENCHMARKS = ["gsm8k", "math", "mmlu"]
# Each benchmark a share of questions answered right; a group of two benchmarks, averaged in its
# column; no group makes the Average, so it is the mean of all three.
SCORING = Scoring(
    headlines={benchmark: Headline("accuracy", proportion=True) for benchmark in BENCHMARKS},
    groups={"Math": ("gsm8k", "math")},
)
UNTUNED = {"base": {"gsm8k": 20.0, "math": 10.0, "mmlu": 40.0}, "instruct": {"gsm8k": 40.0, "math": 30.0, "mmlu": 60.0}}
# (tuning, learning rate, LoRA rank) of each run; every run twice, seeds 0 and 1; grafts at two alphas.
SETTINGS = [("lora", 1e-4, 8), ("lora", 2e-4, 8), ("full", 1e-5, None)]
SEEDS = [0, 1]
ALPHAS = [0.5, 1.0]


def tuned_score(tuning, learning_rate, kind, alpha, seed, benchmark):
    """The fixture's score: Instruct's, minus 4 when tuned directly, plus 2 alpha for a graft;
    +1 at the higher LoRA learning rate, -3 for full tuning, +2 on seed 1."""
    score = UNTUNED["instruct"][benchmark] + (-4.0 if kind == "instruct_ft" else 2.0 * alpha)
    return score + (learning_rate == 2e-4) - 3.0 * (tuning == "full") + 2.0 * seed


def write_scores(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["benchmark,dataset,metric,score,num_examples"]
    lines += [",".join(str(value) for value in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def variant_name(tuning, learning_rate, rank, seed, kind, alpha=None):
    """The canonical name (shadowft.workflow.sweep) of a fixture variant of an SFT run."""
    return Variant(VariantKind(kind), Run("sft", tuning, learning_rate, rank, seed), alpha).name


def sweep_records(root, pair="qwen"):
    """Records in the workflow's shape (one per score file) for the fixture sweep, files written under root."""
    records = []
    for variant, scores in UNTUNED.items():
        for benchmark in BENCHMARKS:
            path = write_scores(
                root / variant / f"{benchmark}.csv", [(benchmark, benchmark, "accuracy", scores[benchmark], 100)]
            )
            records.append(
                {"pair": pair, "variant": variant, "benchmark": benchmark, "scores": path}
                | dict.fromkeys(("stage", "tuning", "learning_rate", "lora_rank", "seed", "alpha"))
            )
    for tuning, learning_rate, rank in SETTINGS:
        for seed in SEEDS:
            for kind, alpha in [("instruct_ft", None), *(("shadow", alpha) for alpha in ALPHAS)]:
                variant = variant_name(tuning, learning_rate, rank, seed, kind, alpha)
                for benchmark in BENCHMARKS:
                    score = tuned_score(tuning, learning_rate, kind, alpha or 0.0, seed, benchmark)
                    path = write_scores(
                        root / variant / f"{benchmark}.csv", [(benchmark, benchmark, "accuracy", score, 100)]
                    )
                    records.append(
                        {
                            "pair": pair,
                            "variant": variant,
                            "stage": "sft",
                            "tuning": tuning,
                            "learning_rate": learning_rate,
                            "lora_rank": rank,
                            "seed": seed,
                            "alpha": alpha,
                            "benchmark": benchmark,
                            "scores": path,
                        }
                    )
    return records


def write_overlap(path, layers=2, *, instruct_tuned=True):
    """An overlap CSV (shadowft.engine.overlap) of one run: its measures per layer, and overall; the sums left empty."""
    path.parent.mkdir(parents=True, exist_ok=True)

    def row(level, name, layer, cos_ib):
        measures = {"sigma": 0.1, "rel_i": 0.3, "cos_ib": cos_ib, "ratio_bi": 0.8, "cos_if": 0.05}
        measures.update(cos_bf=0.04 if instruct_tuned else "", ratio_fb=0.7 if instruct_tuned else "")
        cells = {"level": level, "name": name, "layer": layer, "numel": 16, **measures}
        return ",".join(str(cells.get(column, "")) for column in OVERLAP_COLUMNS)

    rows = [",".join(OVERLAP_COLUMNS)]
    rows += [row("tensor", f"model.layers.{layer}.mlp.up_proj.weight", layer, 0.2) for layer in range(layers)]
    rows += [row("layer", f"layers.{layer}", layer, 0.2 + 0.01 * layer) for layer in range(layers)]
    rows.append(row("overall", "overall", "", 0.234))
    path.write_text("\n".join(rows) + "\n")
    return path


def write_similarity(path, layers=3):
    rows = ["level,name,layer,numel,sum_abs_diff,sum_abs_a,sum_abs_b,sigma"]
    types = ["self_attn.q_proj.weight", "self_attn.q_proj.bias", "mlp.up_proj.weight", "input_layernorm.weight"]
    for layer in range(layers):
        for index, name in enumerate(types):
            rows.append(f"tensor,model.layers.{layer}.{name},{layer},16,1,10,10,{0.01 * (index + 1) + 0.002 * layer}")
    rows += ["tensor,model.embed_tokens.weight,,16,1,10,10,0.003", "tensor,lm_head.weight,,16,1,10,10,0.004"]
    rows += [f"layer,layers.{layer},{layer},,,,,0.02" for layer in range(layers)]
    rows.append("overall,overall,,64,,,,0.0289")
    path.write_text("\n".join(rows) + "\n")
    return path


def sections(markdown, which=0):
    """The paper's tables (`which` 0) or the tables of differences (1) by their ### heading: rows of
    cells, the header first (the alignment line dropped)."""
    tables = {}
    for part in markdown.split("\n### ")[1:]:
        title, body = part.split("\n", 1)
        found = re.findall(r"((?:^\|.*\|$\n?)+)", body.split("\n## ", 1)[0], re.MULTILINE)
        if len(found) > which:
            lines = found[which].strip().splitlines()
            tables[title] = [
                [cell.strip() for cell in line.strip("|").split(" | ")] for line in lines if "--:" not in line
            ]
    return tables


def signed(value):
    """A difference as the report writes it: a sign always, a minus sign rather than a hyphen."""
    return f"{round(value, 1) + 0.0:+.1f}".replace("-", "−")


def wilson_text(score, n=100):
    low, high = wilson(round(score * n / 100), n)
    return f"{score:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def per_seed(tuning, learning_rate, kind, alpha):
    """Column -> the fixture's scores over the seeds, group average and average computed here."""
    scores = {b: [tuned_score(tuning, learning_rate, kind, alpha, s, b) for s in SEEDS] for b in BENCHMARKS}
    scores["Math avg"] = [statistics.fmean(pair) for pair in zip(scores["gsm8k"], scores["math"], strict=True)]
    scores["Average"] = [statistics.fmean(values) for values in zip(*(scores[b] for b in BENCHMARKS), strict=True)]
    return scores


def mean_sd(values):
    return statistics.fmean(values), statistics.stdev(values)


@pytest.fixture
def sweep(tmp_path):
    records = sweep_records(tmp_path / "scores")
    similarity = write_similarity(tmp_path / "similarity.csv")
    out = tmp_path / "out"
    frame = summarize(
        records,
        out / "summary.csv",
        out / "summary.md",
        out_html=out / "summary.html",
        scoring=SCORING,
        similarity={"qwen": similarity},
    )
    return {"records": records, "frame": frame, "out": out, "similarity": similarity}


def test_records_are_typed(tmp_path):
    record = ScoreRecord.parse(
        {"pair": "p", "variant": "sft-lora-lr1e-4-r8-s0/shadow_a0.5", "stage": "sft", "tuning": "lora"}
        | {"learning_rate": "1e-4", "lora_rank": 8.0, "seed": 0, "alpha": 0.5, "benchmark": "b", "scores": "x.csv"}
    )
    assert (record.learning_rate, record.lora_rank, record.alpha, record.kind) == (1e-4, 8, 0.5, "shadow")
    assert isinstance(record.lora_rank, int) and str(record.scores) == "x.csv"
    assert ScoreRecord.parse({"pair": "p", "variant": "instruct", "benchmark": "b", "scores": "y"}).kind == "instruct"
    run = {"stage": "sft", "tuning": "lora", "learning_rate": 1e-4, "lora_rank": 8, "seed": 0}
    bad = {"pair": "p", "variant": variant_name("lora", 1e-4, 8, 0, "instruct_ft"), "benchmark": "b", "scores": "y"}
    bad |= run
    with pytest.raises(ValueError, match="record 3 has unknown key"):
        ScoreRecord.parse(bad | {"rank": 8}, 3)
    with pytest.raises(ValueError, match="lacks benchmark"):
        ScoreRecord.parse({k: v for k, v in bad.items() if k != "benchmark"})
    with pytest.raises(ValueError, match="alpha is given exactly for shadow"):
        ScoreRecord.parse(bad | {"alpha": 1.0})
    with pytest.raises(ValueError, match="needs its tuning"):
        ScoreRecord.parse(bad | {"tuning": None})
    with pytest.raises(ValueError, match="lora_rank must be a whole number"):
        ScoreRecord.parse(bad | {"lora_rank": 8.5})
    with pytest.raises(ValueError, match="unknown variant 'lora/shadow'"):
        ScoreRecord.parse(bad | {"variant": "lora/shadow"})
    with pytest.raises(ValueError, match="unknown variant 'lora/base'"):
        ScoreRecord.parse(bad | {"variant": "lora/base"})


def test_summary_csv_is_tidy_with_a_column_per_sweep_dimension(sweep):
    written = read_summary(sweep["out"] / "summary.csv")

    assert list(pd.read_csv(sweep["out"] / "summary.csv").columns) == list(SUMMARY_COLUMNS)
    assert len(written) == len(sweep["records"]) == 3 * (2 + len(SETTINGS) * len(SEEDS) * (1 + len(ALPHAS)))
    graft_name = variant_name("lora", 2e-4, 8, 1, "shadow", 0.5)
    graft = written[(written["variant"] == graft_name) & (written["benchmark"] == "math")]
    assert graft[["kind", "stage", "tuning", "learning_rate", "lora_rank", "seed", "alpha", "metric"]].iloc[
        0
    ].tolist() == [
        "shadow",
        "sft",
        "lora",
        2e-4,
        8,
        1,
        0.5,
        "accuracy",
    ]
    assert graft["score"].iloc[0] == tuned_score("lora", 2e-4, "shadow", 0.5, 1, "math") == 34.0
    full = written[written["tuning"] == "full"]
    assert full["lora_rank"].isna().all() and full["learning_rate"].eq(1e-5).all()
    instruct = written[written["variant"] == "instruct"]
    assert instruct[["stage", "tuning"]].isna().all().all() and instruct[["seed", "alpha"]].isna().all().all()
    pd.testing.assert_frame_equal(written, sweep["frame"])  # read back, the same frame
    assert list(dict.fromkeys(written["variant"]))[:4] == [
        "base",
        "instruct",
        variant_name("lora", 1e-4, 8, 0, "instruct_ft"),
        variant_name("lora", 1e-4, 8, 0, "shadow", 0.5),
    ]


def test_one_table_per_pair_and_setting_with_seeds_averaged(sweep):
    markdown = (sweep["out"] / "summary.md").read_text()
    tables, differences = sections(markdown), sections(markdown, 1)

    assert list(tables) == ["SFT, LoRA, rank 8, lr 0.0001", "SFT, LoRA, rank 8, lr 0.0002", "SFT, Full, lr 1e-05"]
    assert list(differences) == list(tables)
    for (tuning, learning_rate, _), rows, changes in zip(SETTINGS, tables.values(), differences.values(), strict=True):
        label = {"lora": "LoRA", "full": "Full"}[tuning]
        assert rows[0] == ["Variant", *BENCHMARKS, "Math avg", "Average"]
        assert [row[0] for row in rows[1:]] == [
            "Base",
            "Instruct",
            f"Instruct + {label}",
            f"Shadow-{label} (α=0.5)",
            f"Shadow-{label} (α=1)",
        ]
        instruct = UNTUNED["instruct"]
        # One run: each benchmark a share of its 100 questions (Wilson's interval); the group and the
        # Average from their benchmarks' resamples, an interval around their value.
        assert rows[2][1:4] == [wilson_text(instruct[b]) for b in BENCHMARKS]
        for cell, value in zip(rows[2][4:], (35.0, 130 / 3), strict=True):
            low, high = map(float, re.fullmatch(rf"{value:.1f} \[(\d+\.\d), (\d+\.\d)\]", cell).groups())
            assert low < value < high
        assert rows[1][1:4] == [wilson_text(UNTUNED["base"][b]) for b in BENCHMARKS]

        reference = per_seed(tuning, learning_rate, "instruct_ft", 0.0)
        instruct_columns = {**instruct, "Math avg": 35.0, "Average": 130 / 3}
        for row, (kind, alpha) in zip(rows[3:], [("instruct_ft", 0.0), ("shadow", 0.5), ("shadow", 1.0)], strict=True):
            for cell, (column, values) in zip(
                row[1:], per_seed(tuning, learning_rate, kind, alpha).items(), strict=True
            ):
                mean, sd = mean_sd(values)
                assert cell == f"{mean:.1f} ± {sd:.1f} ({min(values):.1f}–{max(values):.1f})", (row[0], column)
                # Its differences, seed by seed: from Instruct, and for a graft from the same seed's baseline.
                found = next(line for line in changes if line[:2] == [column, row[0]])
                change = [value - instruct_columns[column] for value in values]
                expected = [f"{signed(statistics.fmean(change))} ({signed(min(change))} to {signed(max(change))})"]
                expected.append("–, –")  # no per-question grades to pair
                if kind == "shadow":
                    change = [a - b for a, b in zip(values, reference[column], strict=True)]
                    expected += [f"{signed(statistics.fmean(change))} ({signed(min(change))} to {signed(max(change))})"]
                    expected.append("–, –")
                else:
                    expected += ["", ""]
                assert found[2:] == expected, (row[0], column)
        assert changes[0] == ["Column", "Variant", "Δ vs Instruct", "p", f"Δ vs Instruct + {label}", "p"]
    # One cell by hand: LoRA at 1e-4, alpha 1, gsm8k: seeds 42 and 44; Instruct 40; Instruct + LoRA 36 and 38.
    assert tables["SFT, LoRA, rank 8, lr 0.0001"][5][1] == "43.0 ± 1.4 (42.0–44.0)"
    assert ["gsm8k", "Shadow-LoRA (α=1)", "+3.0 (+2.0 to +4.0)", "–, –", "+6.0 (+6.0 to +6.0)", "–, –"] in differences[
        "SFT, LoRA, rank 8, lr 0.0001"
    ]
    assert "Table 3: qwen, SFT, Full, lr 1e-05." in markdown
    assert "mean ± standard deviation over seeds 0, 1 (n=2)" in markdown
    assert "each variant minus Instruct and, for the graft and the tuned base, minus Instruct + Full" in markdown
    assert "Questions (n): gsm8k 100, math 100, mmlu 100." in markdown
    assert "Each benchmark's score: accuracy (gsm8k, math, mmlu)." in markdown
    assert "Math avg: unweighted mean of the group's benchmark scores." in markdown
    assert "Average: unweighted mean of every benchmark's score." in markdown
    assert "sigma = 2.89%" in markdown
    assert "†" not in markdown  # no model ran its own code
    assert "Learning rates: LoRA 0.0001, 0.0002; Full 1e-05 (the learning-rate figure" in markdown
    # No benchmark declares a role: the verdict weighs the Average, and says so.
    verdict = markdown.split("## Glossary")[0]
    assert "the Average (no benchmark declares a role)" in verdict
    # Seed by seed, and no p-value where there are no per-question grades to pair.
    assert re.search(
        r"Instruct \+ Full − Instruct on the Average \(no benchmark declares a role\): "
        r"seed 0: −\d+\.\d; seed 1: −\d+\.\d, unclear\)",
        verdict,
    )


def test_html_tables_hold_the_markdown_cells(sweep):
    page = (sweep["out"] / "summary.html").read_text()
    markdown = (sweep["out"] / "summary.md").read_text()

    assert page.startswith("<!DOCTYPE html>") and "<script" not in page and "http" not in page
    assert page.count("<table>") == 1 + 2 * 3  # the glossary, then per setting the scores and the differences
    for which in (0, 1):
        for rows in sections(markdown, which).values():
            for row in rows[1:]:
                cells = [f">{html.escape(cell)}</td>" for cell in row]
                assert all(cell in page for cell in cells), row
    assert "<h3>SFT, LoRA, rank 8, lr 0.0002</h3>" in page and "Table 2: qwen, SFT, LoRA" in page
    # A cell's differences are its tooltip.
    assert 'title="Δ vs Instruct: +3.0 (+2.0 to +4.0), –, –; Δ vs Instruct + LoRA: +6.0 (+6.0 to +6.0), –, –">' in page


def test_pair_tables_compute_means_and_spread(sweep):
    tables = pair_tables(sweep["frame"], "qwen", SCORING)
    graft = tables[1].row("shadow", 1.0)
    values = [tuned_score("lora", 2e-4, "shadow", 1.0, seed, "mmlu") for seed in SEEDS]

    assert graft.cells["mmlu"].mean == statistics.fmean(values) == 64.0
    assert graft.cells["mmlu"].sd == pytest.approx(statistics.stdev(values)) and graft.cells["mmlu"].n == 2
    assert graft.seeds == (0, 1) and tables[1].row("instruct").seeds == ()
    assert tables[1].row("instruct").cells["Average"].sd is None


def test_one_seed_shows_no_spread_and_says_so(tmp_path):
    records = [r for r in sweep_records(tmp_path) if r["seed"] in (None, 0) and r["tuning"] in (None, "full")]

    summarize(records, tmp_path / "s.csv", tmp_path / "s.md")

    markdown = (tmp_path / "s.md").read_text()
    rows = sections(markdown)["SFT, Full, lr 1e-05"]
    # The default rule knows nothing of the metric: no share of questions, so no interval, and the caption says so.
    assert rows[5][1] == "39.0" and "A score of one run without brackets has no interval" in markdown
    changes = sections(markdown, 1)["SFT, Full, lr 1e-05"]
    # 40 + 2 - 3 against Instruct 40 and Instruct + Full 33.
    expected = ["−1.0", "–", "+6.0", "–"]
    assert next(line for line in changes if line[:2] == ["gsm8k", "Shadow-Full (α=1)"])[2:] == expected
    assert not any("±" in cell for row in rows for cell in row) and "One seed, 0." in markdown
    assert "Learning rates: Full 1e-05; one per setting, so there is no learning-rate figure." in markdown


def test_without_a_rule_a_benchmark_is_its_first_metric_averaged_over_its_datasets(tmp_path):
    bbh = [("bbh", "bbh-dates", "accuracy", 40.0, 10), ("bbh", "bbh-logic", "accuracy", 50.0, 10)]
    code = [("humaneval", "humaneval", "pass@1", 30.0, 164), ("humaneval", "humaneval", "pass@10", 60.0, 164)]
    records = [
        {"pair": "p", "variant": "instruct", "benchmark": "bbh", "scores": write_scores(tmp_path / "a.csv", bbh)},
        {
            "pair": "p",
            "variant": "instruct",
            "benchmark": "humaneval",
            "scores": write_scores(tmp_path / "b.csv", code),
        },
    ]

    frame = summarize(records, tmp_path / "s.csv", tmp_path / "s.md")

    (table,) = pair_tables(frame, "p")
    assert table.columns == ["bbh", "humaneval", "Average"]
    # bbh: (40 + 50) / 2; humaneval: pass@1, its first metric; the Average: (45 + 30) / 2.
    assert [table.row("instruct").cells[c].mean for c in table.columns] == [45.0, 30.0, 37.5]
    assert table.rules.benchmarks == {"bbh": "accuracy, mean over its 2 datasets", "humaneval": "pass@1"}


def test_missing_scores_show_a_dash_and_no_average(tmp_path):
    records = [r for r in sweep_records(tmp_path) if r["seed"] in (None, 0) and r["tuning"] in (None, "full")]
    records = [r for r in records if not (r["alpha"] == 1.0 and r["benchmark"] == "mmlu")]

    summarize(records, tmp_path / "s.csv", tmp_path / "s.md")

    rows = sections((tmp_path / "s.md").read_text())["SFT, Full, lr 1e-05"]
    assert rows[5][1:] == ["39.0", "29.0", "–", "–"]


def test_without_instruct_there_are_no_differences(tmp_path):
    graft = variant_name("full", 1e-5, None, 0, "shadow", 1.0)
    records = [r for r in sweep_records(tmp_path) if r["variant"] in ("base", graft)]

    summarize(records, tmp_path / "s.csv", tmp_path / "s.md")

    markdown = (tmp_path / "s.md").read_text()
    assert sections(markdown, 0)["SFT, Full, lr 1e-05"][1:] == [
        ["Base", "20.0", "10.0", "40.0", "23.3"],
        ["Shadow-Full (α=1)", "39.0", "29.0", "59.0", "42.3"],
    ]
    assert sections(markdown, 1) == {}, "nothing to compare with"
    assert "No Instruct scores to compare with." in markdown and "No verdict" in markdown


def test_pairs_get_tables_of_their_own(tmp_path):
    first = sweep_records(tmp_path / "q", "qwen")[:6]  # base and instruct
    second = sweep_records(tmp_path / "l", "llama")[:3]

    summarize(first + second, tmp_path / "s.csv", tmp_path / "s.md")

    markdown = (tmp_path / "s.md").read_text()
    assert markdown.index("## qwen") < markdown.index("## llama")
    assert "Table 2: llama." in markdown and "No tuned variants." in markdown


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "p" / "instruct" / "gsm8k.csv"
    record = {"pair": "p", "variant": "instruct", "benchmark": "gsm8k", "scores": missing}

    with pytest.raises(FileNotFoundError, match=rf"pair 'p', variant 'instruct': {missing}"):
        summarize([record], tmp_path / "s.csv", tmp_path / "s.md")
    assert not (tmp_path / "s.csv").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("benchmark,dataset,metric,num_examples\ng,g,acc,10\n", r"columns are .*'num_examples'\], expected .*'score'"),
        ("benchmark,dataset,metric,score,num_examples\n", "has no rows"),
        ("benchmark,dataset,metric,score,num_examples\ng,g,acc,high,1\n", "line 2: score must be a number"),
        ("benchmark,dataset,metric,score,num_examples\ng,g,acc,-,1\n", "line 2: score must be a number"),
        ("benchmark,dataset,metric,score,num_examples\ng,d,acc,,1\n", "line 2: score must be a number"),
        ("benchmark,dataset,metric,score,num_examples\ng,d,acc,nan,1\n", "no score for g/d/acc"),
        ("benchmark,dataset,metric,score,num_examples\nother,d,acc,1,1\n", "holds benchmark.s. other, not 'g'"),
    ],
)
def test_unusable_scores_file_is_named(tmp_path, content, message):
    path = tmp_path / "scores.csv"
    path.write_text(content)

    with pytest.raises(ValueError, match=rf"{path}.*{message}"):
        summarize([{"pair": "p", "variant": "base", "benchmark": "g", "scores": path}], tmp_path / "s", tmp_path / "m")


def test_duplicates_and_colliding_runs_are_refused(tmp_path):
    path = write_scores(tmp_path / "scores.csv", [("g", "g", "accuracy", 1.0, 1)])
    record = {"pair": "p", "variant": "base", "benchmark": "g", "scores": path}
    with pytest.raises(ValueError, match=r"twice: pair=p, variant=base, benchmark=g"):
        summarize([record, record], tmp_path / "s.csv", tmp_path / "s.md")
    with pytest.raises(ValueError, match="no score records"):
        summarize([], tmp_path / "s.csv", tmp_path / "s.md")
    # Two records of one run: the second claims the first's seed, which its name does not say.
    tuned = {"pair": "p", "stage": "sft", "tuning": "lora", "learning_rate": 1e-4, "lora_rank": 8, "seed": 0}
    twins = [
        tuned | {"variant": variant_name("lora", 1e-4, 8, seed, "instruct_ft"), "benchmark": "g", "scores": path}
        for seed in (0, 1)
    ]
    with pytest.raises(ValueError, match=r"record 1: seed 0 differs from the variant's \(1, from its name sft-lora"):
        summarize(twins, tmp_path / "s.csv", tmp_path / "s.md")


def test_benchmark_groups_must_name_scored_benchmarks(tmp_path):
    records = sweep_records(tmp_path)[:6]
    with pytest.raises(ValueError, match="group 'Code': pair 'qwen' has no scores for humaneval"):
        summarize(records, tmp_path / "s.csv", tmp_path / "s.md", scoring=Scoring(groups={"Code": ("humaneval",)}))


def write_trainer_state(path, losses, every=10):
    """A Trainer's state file whose log_history holds `losses`, one per `every` steps."""
    path.parent.mkdir(parents=True, exist_ok=True)
    history = [{"step": every * (index + 1), "loss": loss, "epoch": 0.1 * index} for index, loss in enumerate(losses)]
    history.append({"step": every * len(losses), "train_loss": sum(losses) / len(losses)})
    path.write_text(json.dumps({"log_history": history}))
    return path


def test_training_loss_figure_draws_every_run_and_role(tmp_path):
    runs = {}
    for run in ("sft-lora-lr1e-4-r8-s0", "sft-lora-lr1e-4-r8-s1", "sft-full-lr1e-5-s0", "dpo-full-lr1e-5-s0"):
        runs[run] = {
            role: write_trainer_state(tmp_path / run / role / "trainer_state.json", [3.0, 2.0, 1.5 + 0.1 * index])
            for index, role in enumerate(("base", "instruct"))
        }
    assert figures.training_losses(runs["sft-full-lr1e-5-s0"]["instruct"]) == ([10, 20, 30], [3.0, 2.0, 1.6])
    decoded(figures.plot_training_loss(runs, tmp_path / "training.png", "p"))
    (tmp_path / "empty.json").write_text(json.dumps({"log_history": [{"step": 5, "train_loss": 1.0}]}))
    with pytest.raises(ValueError, match="empty.json: no training loss logged"):
        figures.training_losses(tmp_path / "empty.json")


def decoded(png):
    """The PNG's pixels (which must decode), checked to be a real picture: large, and not one colour."""
    pixels = matplotlib.image.imread(png)
    assert pixels.ndim == 3 and pixels.shape[0] > 300 and pixels.shape[1] > 600, pixels.shape
    assert np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0).shape[0] > 50
    return pixels


@pytest.mark.slow
def test_every_figure_is_drawn_and_decodes(sweep, tmp_path):
    names = ("scores", "alpha", "learning_rate", "similarity")
    outputs = {name: tmp_path / "plots" / f"{name}.png" for name in names}

    drawn = figures.draw_figures(
        sweep["out"] / "summary.csv", "qwen", outputs, scoring=SCORING, similarity_csv=sweep["similarity"]
    )

    assert drawn == list(outputs.values())
    shapes = {name: decoded(path).shape for name, path in outputs.items()}
    assert shapes["scores"][0] > shapes["similarity"][0]  # a panel per setting: three rows of bars
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == sorted(f"{name}.png" for name in names)


@pytest.mark.slow
def test_learning_rate_figure_is_refused_for_one_rate(tmp_path):
    records = [r for r in sweep_records(tmp_path) if r["learning_rate"] != 2e-4]
    frame = summarize(records, tmp_path / "s.csv", tmp_path / "s.md")
    tables = pair_tables(frame, "qwen")

    with pytest.raises(ValueError, match="one learning rate per setting: no learning-rate curve"):
        figures.plot_learning_rate(tables, tmp_path / "lr.png")
    assert not (tmp_path / "lr.png").exists()
    decoded(figures.plot_alpha(tables, tmp_path / "alpha.png"))


def test_similarity_figure_reads_the_similarity_columns(tmp_path):
    assert figures.tensor_type("model.layers.12.self_attn.q_proj.bias") == "self_attn.q_proj.bias"
    assert figures.tensor_type("model.layers.3.mlp.up_proj.weight") == "mlp.up_proj"
    assert figures.tensor_type("lm_head.weight") is None
    decoded(figures.plot_similarity(write_similarity(tmp_path / "s.csv", layers=24), tmp_path / "sim.png", "p"))
    bare = tmp_path / "bare.csv"
    bare.write_text("level,sigma\noverall,0.1\n")
    with pytest.raises(ValueError, match=r"lacks column\(s\) name, layer"):
        figures.plot_similarity(bare, tmp_path / "x.png", "p")


def test_each_runs_overlap_is_one_sentence_and_a_line_per_layer(tmp_path):
    full = RunOverlap.read(write_overlap(tmp_path / "results" / "p" / "sft-full-lr1e-5-s0" / "overlap.csv", layers=4))
    lora = RunOverlap.read(
        write_overlap(tmp_path / "results" / "p" / "sft-lora-lr1e-4-r8-s0" / "overlap.csv", instruct_tuned=False)
    )
    assert (full.pair, full.run) == ("p", "sft-full-lr1e-5-s0") and set(full.overall) == set(MEASURES)
    assert full.sentence().startswith(
        "Updates' overlap, sft-full-lr1e-5-s0: cos(Δ_I, Δ_B) = 0.23 over the layers, ‖Δ_B‖/‖Δ_I‖ = 0.80; "
        "the same tuning on INSTRUCT, cos(Δ_B, Δ_F) = 0.04; ‖Δ_I‖/‖W_B‖ = 0.30"
    )
    assert "cos(Δ_B, Δ_F)" not in lora.sentence()  # INSTRUCT was not tuned
    decoded(plot_overlap([full, lora], tmp_path / "overlap.png", "p"))
    (tmp_path / "bare.csv").write_text("level,name\noverall,overall\n")
    with pytest.raises(ValueError, match=r"bare.csv lacks column\(s\) layer, sigma"):
        RunOverlap.read(tmp_path / "bare.csv")


def test_the_report_says_each_runs_overlap_under_its_pair(tmp_path):
    records = [
        {
            "pair": "p",
            "variant": "instruct",
            "benchmark": "b",
            "scores": write_scores(tmp_path / "i.csv", [("b", "b", "accuracy", 50.0, 10)]),
        }
    ]
    overlap = [
        write_overlap(tmp_path / "results" / "p" / run / "overlap.csv")
        for run in ("sft-full-lr1e-5-s0", "sft-lora-lr1e-4-r8-s0")
    ]
    summarize(records, tmp_path / "s.csv", tmp_path / "s.md", overlap=overlap)
    lines = [line for line in (tmp_path / "s.md").read_text().splitlines() if line.startswith("Updates' overlap")]
    assert [line.split(":")[0] for line in lines] == [
        "Updates' overlap, sft-full-lr1e-5-s0",
        "Updates' overlap, sft-lora-lr1e-4-r8-s0",
    ]


def test_unknown_figure_is_refused(sweep, tmp_path):
    with pytest.raises(ValueError, match="unknown figure.s. heatmap"):
        figures.draw_figures(sweep["out"] / "summary.csv", "qwen", {"heatmap": tmp_path / "h.png"})


# --- Snakemake's HTML report -------------------------------------------------------------------

REPORT_RULES = (
    "report",
    "samples",
    "figures",
    "alpha_figure",
    "claim_figure",
    "learning_rate_figure",
    "training_figure",
    "overlap_figure",
    "all",
)
CAPTIONS = (
    "Every score in tidy form",
    "Every paired difference of the tables in tidy form",
    "glossary and tables of summary.html as Markdown",
    "The report: first the verdict",
    "with every variant's answer",
    "the score of every variant (bars)",
    "score against its strength alpha",
    "claim in one picture",
    "sigma per layer, one line per tensor type",
    "how each run's updates overlap, per layer",
)


def workflow_files(workdir):
    """(path, rule) of every file the demo's workflow makes, from Snakemake's own summary."""
    lines = snakemake(workdir, "--summary", "--cores", "1").stdout.splitlines()
    header = next(index for index, line in enumerate(lines) if line.startswith("output_file"))
    return [tuple(line.split("\t")[:3:2]) for line in lines[header + 1 :] if line.strip()]


def report_files(report_html):
    """What Snakemake's HTML report embeds: file name -> decoded bytes."""
    text = report_html.read_text()
    embedded = re.findall(r"data:[\w/+.-]+;charset=[\w-]+;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", text)
    return {name: base64.b64decode(data) for name, data in embedded}


def assert_report_holds(workdir, outputs):
    """The workflow's HTML report of workdir embeds every one of `outputs` (paths under workdir), byte for byte."""
    report = workdir / "results" / "report.html"
    assert report.stat().st_size > 100_000
    embedded = report_files(report)
    for output in outputs:
        if output.endswith(".rst"):  # the verdict: included in the landing page, not embedded as a file
            continue
        name = output.rsplit("/", 1)[-1]
        same_name = [path for path in outputs if path.rsplit("/", 1)[-1] == name]
        if len(same_name) == 1:  # the report keys files by name
            assert embedded[name] == (workdir / output).read_bytes(), output
    text = report.read_text()
    assert "Shadow-FT: fine-tune BASE, graft its update onto INSTRUCT" in text  # the workflow description
    for caption in CAPTIONS:  # one phrase of each caption file (report/*.rst)
        assert caption in html.unescape(text), caption
    # The landing page includes the verdict and the glossary (results/verdict.rst).
    landing = html.unescape(text)
    assert "Verdict" in landing and "Glossary" in landing and "tuning INSTRUCT directly costs its skills" in landing
    assert "https://cdn" not in text


def write_predictions(path, benchmark, right, questions):
    """An evaluation's predictions.json: `right` of `questions` answered right, each graded."""
    entries = {
        str(index): {
            "origin_prompt": [{"role": "HUMAN", "prompt": f"question {index}"}],
            "prediction": "a" if index < right else "b",
            "gold": "a",
            "correct": index < right,
        }
        for index in range(questions)
    }
    path.write_text(json.dumps({benchmark: entries}))
    return path


@pytest.mark.slow
def test_html_report_holds_every_table_and_figure(tmp_path):
    """The report rules on stored scores in the demo's layout (no model is trained), then `snakemake --report`."""
    files = workflow_files(tmp_path)
    scores = [path for path, rule in files if rule == "evaluate" and path.endswith("/scores.csv")]
    for index, path in enumerate(scores):
        benchmark = path.split("/")[-2]
        write_scores(tmp_path / path, [(benchmark, benchmark, "exact_match", float(index % 7 * 10), 200)])
        write_predictions((tmp_path / path).with_name("predictions.json"), benchmark, index % 7 * 20, 200)
        Hardware.here().write((tmp_path / path).with_name("hardware.json"))
    for path, rule in files:
        if rule == "similarity":
            write_similarity(tmp_path / path, layers=2)
        if rule == "overlap":
            write_overlap(tmp_path / path)
        if rule == "train":
            write_trainer_state(tmp_path / path / figures.TRAINER_STATE, [2.0, 1.2, 0.7])
    allowed = ("--allowed-rules", *REPORT_RULES, "environment_versions")

    snakemake(tmp_path, "--cores", "1", *allowed)
    snakemake(tmp_path, "--report", "results/report.html", *allowed)

    outputs = [path for path, rule in files if rule in REPORT_RULES]
    assert {path.rsplit("/", 1)[-1] for path in outputs} >= {
        "summary.csv",
        "summary.md",
        "summary.html",
        "paired.csv",
        "verdict.rst",
        "demo_task.md",
        "demo_task.html",
        "scores.png",
        "alpha.png",
        "claim.png",
        "similarity.png",
        "training.png",
        "overlap.png",
    }
    for png in (path for path in outputs if path.endswith(".png")):
        decoded(tmp_path / png)
    assert_report_holds(tmp_path, outputs)
    summary = read_summary(tmp_path / "results" / "summary.csv")
    # Every score with its Wilson interval: the grades in predictions.json reproduce each score.
    assert len(summary) == len(scores) and not math.isnan(summary["score"].sum())
    assert (summary["interval"] == "Wilson").all() and (summary["ci_low"] <= summary["score"]).all()
    # The workflow's records carry the demo config's sweep values.
    tuned = summary[summary["tuning"].notna()]
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    assert tuned.groupby("tuning")["learning_rate"].unique().map(list).to_dict() == {
        tuning: config["training"]["learning_rates"][tuning] for tuning in config["training"]["tunings"]
    }
    assert set(tuned["stage"]) == {"sft"} and set(tuned["seed"]) == {config["seed"]}
    assert (
        set(tuned.loc[tuned["tuning"] == "lora", "lora_rank"]) == {8}
        and tuned.loc[tuned["tuning"] == "full", "lora_rank"].isna().all()
    )
    assert sorted(tuned["alpha"].dropna().unique()) == sorted(config["graft"]["alphas"])
    assert summary.loc[summary["tuning"].isna(), ["seed", "alpha", "learning_rate"]].isna().all().all()
    text = (tmp_path / "results" / "report.html").read_text()
    for document in (
        (tmp_path / "results" / "summary.md").read_text(),
        (tmp_path / "results" / "summary.html").read_text(),
        text,
    ):
        assert_states_versions(document)


def installed_versions(environment):
    """The Python and tool versions importlib.metadata reports in one of this checkout's environments."""
    probe = (
        "import importlib.metadata as m, json, platform, sys\n"
        "def v(name):\n"
        "    try: return m.version(name)\n"
        "    except m.PackageNotFoundError: return None\n"
        "print(json.dumps([platform.python_version(), {name: v(name) for name in sys.argv[1:]}]))"
    )
    python = VENVS / environment / "bin" / "python"
    result = subprocess.run([python, "-c", probe, *TOOLS], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def assert_states_versions(text):
    """The text states the checkout's commit and every environment's Python and installed tools, as
    importlib.metadata reports them there."""
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    assert f"Made with shadowft {head.stdout.strip()}" in text
    for environment in ("core", "train", "eval"):
        python, versions = installed_versions(environment)
        installed = [f"{TOOLS[name]} {version}" for name, version in versions.items() if version is not None]
        assert f"{environment} (Python {python}): {', '.join(installed)}" in text, environment
    assert "LLaMA-Factory" in text and "OpenCompass" in text and "Snakemake" in text


def test_versions_record_this_environment_and_read_back(tmp_path):
    record = EnvironmentVersions.installed("core", "abc")
    record.write(tmp_path / "core.json")

    assert EnvironmentVersions.read(tmp_path / "core.json") == record
    python, versions = installed_versions("core")
    assert (record.python, record.tools) == (python, versions) and versions["snakemake"] is not None
    written = json.loads((tmp_path / "core.json").read_text())
    (tmp_path / "bad.json").write_text(json.dumps({**written, "tools": {}}))
    with pytest.raises(ValueError, match="bad.json: tools are"):
        EnvironmentVersions.read(tmp_path / "bad.json")
    (tmp_path / "old.json").write_text(json.dumps({key: value for key, value in written.items() if key != "hardware"}))
    with pytest.raises(ValueError, match="old.json: not an environment's versions record"):
        EnvironmentVersions.read(tmp_path / "old.json")
    with pytest.raises(FileNotFoundError):  # Snakemake leaves a parameter undetermined on this error
        EnvironmentVersions.read(tmp_path / "absent.json")


def test_checkout_commit_is_the_head_dirty_or_unknown(tmp_path):
    assert checkout_commit(tmp_path) == "unknown"  # not a repository
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run([*git, "init", "-q"], check=True)
    (tmp_path / "f").write_text("1")
    subprocess.run([*git, "add", "f"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "f"], check=True)
    head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert checkout_commit(tmp_path) == head
    (tmp_path / "f").write_text("2")
    assert checkout_commit(tmp_path) == f"{head}-dirty"
