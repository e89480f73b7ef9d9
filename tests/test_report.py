"""summarize / score_table / plot_scores on small hand-written scores.csv files."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from shadowft.report import SUMMARY_COLUMNS, Variant, overall_sigma, plot_scores, score_table, summarize

# Runs as shadowft.runs names them (the paper's learning rates and rank, seed 0).
LORA, FULL = "sft-lora-lr2e-4-r8-s0", "sft-full-lr1e-5-s0"
# pair -> variant -> benchmark -> score, variants deliberately out of report order;
# tunings and benchmarks are reported in the order they first appear (the config's).
SCORES = {
    "qwen": {
        f"{LORA}/shadow_a1": {"gsm8k": 43.5, "mmlu": 60.04},
        f"{FULL}/shadow_a1": {"gsm8k": 44.0, "mmlu": 59.0},
        "instruct": {"gsm8k": 40.0, "mmlu": 60.0},
        f"{LORA}/shadow_a0.5": {"gsm8k": 42.0, "mmlu": 60.5},
        "base": {"gsm8k": 30.0, "mmlu": 50.0},
        f"{FULL}/instruct_ft": {"gsm8k": 41.0, "mmlu": 58.0},
        f"{LORA}/instruct_ft": {"gsm8k": 38.5, "mmlu": 61.0},
    },
}


def write_scores(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=["benchmark", "dataset", "metric", "score", "num_examples"]).to_csv(path, index=False)
    return path


def records_for(root, scores):
    """One scores.csv per (pair, variant, benchmark), laid out like results/{pair}/eval/{variant}/{benchmark}/."""
    return [
        {
            "pair": pair,
            "variant": variant,
            "scores": write_scores(
                root / pair / "eval" / variant / benchmark / "scores.csv",
                [(benchmark, benchmark, "accuracy", score, 100)],
            ),
        }
        for pair, variants in scores.items()
        for variant, benchmarks in variants.items()
        for benchmark, score in benchmarks.items()
    ]


def table_rows(markdown: str, pair: str) -> list[list[str]]:
    section = markdown.split(f"## {pair}\n", 1)[1].split("\n## ", 1)[0]
    return [
        [cell.strip() for cell in line.strip("|").split(" | ")] for line in section.splitlines() if line.startswith("|")
    ]


@pytest.fixture
def summary(tmp_path):
    records = records_for(tmp_path / "results", SCORES)
    frame = summarize(records, tmp_path / "summary.csv", tmp_path / "summary.md")
    return frame, (tmp_path / "summary.md").read_text()


def test_summary_csv_is_tidy_with_tuning_and_alpha(summary, tmp_path):
    frame, _ = summary
    written = pd.read_csv(tmp_path / "summary.csv", keep_default_na=False, na_values=[""])

    assert list(written.columns) == list(SUMMARY_COLUMNS)
    assert len(written) == 14
    shadow = written[written["variant"] == f"{LORA}/shadow_a0.5"].iloc[0]
    assert (shadow["tuning"], shadow["alpha"]) == ("lora", 0.5)
    instruct = frame[frame["variant"] == "instruct"].iloc[0]
    assert instruct["tuning"] == "" and math.isnan(instruct["alpha"])
    assert list(dict.fromkeys(frame["variant"])) == [
        "base",
        "instruct",
        f"{LORA}/instruct_ft",
        f"{LORA}/shadow_a0.5",
        f"{LORA}/shadow_a1",
        f"{FULL}/instruct_ft",
        f"{FULL}/shadow_a1",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results", "summary.csv", "summary.md"]


def test_markdown_table_shows_scores_and_differences_from_instruct(summary):
    _, markdown = summary

    rows = table_rows(markdown, "qwen")

    assert rows[0] == ["Variant", "gsm8k", "mmlu", "Average"]
    assert rows[2:] == [
        ["Base", "30.0 (-10.0)", "50.0 (-10.0)", "40.0 (-10.0)"],
        ["Instruct", "40.0", "60.0", "50.0"],
        ["Instruct + LoRA", "38.5 (-1.5)", "61.0 (+1.0)", "49.8 (-0.2)"],
        ["Shadow-LoRA (α=0.5)", "42.0 (+2.0)", "60.5 (+0.5)", "51.2 (+1.2)"],
        ["Shadow-LoRA (α=1)", "43.5 (+3.5)", "60.0 (+0.0)", "51.8 (+1.8)"],
        ["Instruct + Full", "41.0 (+1.0)", "58.0 (-2.0)", "49.5 (-0.5)"],
        ["Shadow-Full (α=1)", "44.0 (+4.0)", "59.0 (-1.0)", "51.5 (+1.5)"],
    ]
    assert "Table 1: qwen." in markdown
    assert "difference from Instruct" in markdown


def test_pairs_get_one_table_each(tmp_path):
    scores = {
        "qwen": {"instruct": {"gsm8k": 40.0}},
        "llama": {"base": {"gsm8k": 20.0}, "instruct": {"gsm8k": 25.0}, f"{LORA}/base_ft": {"gsm8k": 22.0}},
    }

    summarize(records_for(tmp_path, scores), tmp_path / "s.csv", tmp_path / "s.md")

    markdown = (tmp_path / "s.md").read_text()
    assert markdown.index("## qwen") < markdown.index("## llama")
    assert "Table 2: llama." in markdown
    assert table_rows(markdown, "llama")[2:] == [
        ["Base", "20.0 (-5.0)", "20.0 (-5.0)"],
        ["Instruct", "25.0", "25.0"],
        ["Base + LoRA", "22.0 (-3.0)", "22.0 (-3.0)"],
    ]


def test_datasets_are_averaged_and_metrics_kept_apart(tmp_path):
    bbh = [("bbh", "bbh-dates", "accuracy", 40.0, 10), ("bbh", "bbh-logic", "accuracy", 50.0, 10)]
    code = [("humaneval", "humaneval", "pass@1", 30.0, 164), ("humaneval", "humaneval", "pass@10", 60.0, 164)]
    records = [
        {"pair": "p", "variant": "instruct", "scores": write_scores(tmp_path / "a.csv", bbh + code)},
    ]

    frame = summarize(records, tmp_path / "s.csv", tmp_path / "s.md")

    table = score_table(frame, "p")
    assert list(table.columns) == ["bbh", "humaneval (pass@1)", "humaneval (pass@10)", "Average"]
    assert table.loc["instruct"].tolist() == [45.0, 30.0, 60.0, 45.0]
    assert "several datasets show their unweighted mean" in (tmp_path / "s.md").read_text()


def test_missing_scores_show_a_dash_and_no_average(tmp_path):
    scores = {"p": {"instruct": {"gsm8k": 40.0, "mmlu": 60.0}, f"{LORA}/shadow_a1": {"gsm8k": 45.0}}}

    summarize(records_for(tmp_path, scores), tmp_path / "s.csv", tmp_path / "s.md")

    rows = table_rows((tmp_path / "s.md").read_text(), "p")
    assert rows[-1] == ["Shadow-LoRA (α=1)", "45.0 (+5.0)", "–", "–"]


def test_without_instruct_there_are_no_differences(tmp_path):
    scores = {"p": {"base": {"gsm8k": 20.0}, f"{LORA}/shadow_a1": {"gsm8k": 25.0}}}

    summarize(records_for(tmp_path, scores), tmp_path / "s.csv", tmp_path / "s.md")

    markdown = (tmp_path / "s.md").read_text()
    assert table_rows(markdown, "p")[2:] == [["Base", "20.0", "20.0"], ["Shadow-LoRA (α=1)", "25.0", "25.0"]]
    assert "no Instruct scores to compare with" in markdown


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "p" / "eval" / "instruct" / "gsm8k" / "scores.csv"

    with pytest.raises(FileNotFoundError, match=rf"pair 'p', variant 'instruct': {missing}"):
        summarize([{"pair": "p", "variant": "instruct", "scores": missing}], tmp_path / "s.csv", tmp_path / "s.md")
    assert not (tmp_path / "s.csv").exists()


def test_missing_column_is_named(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("benchmark,dataset,metric,num_examples\ngsm8k,gsm8k,accuracy,10\n")

    with pytest.raises(ValueError, match=rf"{path} lacks column\(s\) score"):
        summarize([{"pair": "p", "variant": "base", "scores": path}], tmp_path / "s.csv", tmp_path / "s.md")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "is empty"),
        ("benchmark,dataset,metric,score,num_examples\n", "has no rows"),
        ("benchmark,dataset,metric,score,num_examples\ng,g,acc,high,1\n", "non-numeric score"),
        ("benchmark,dataset,metric,score,num_examples\ng,g,acc,-,1\n", "no score for g/g/acc"),
        ("benchmark,dataset,metric,score,num_examples\ng,d,acc,,1\n", "no score for g/d/acc"),
    ],
)
def test_unusable_scores_file_is_named(tmp_path, content, message):
    path = tmp_path / "scores.csv"
    path.write_text(content)

    with pytest.raises(ValueError, match=rf"{path}.*{message}"):
        summarize([{"pair": "p", "variant": "base", "scores": path}], tmp_path / "s.csv", tmp_path / "s.md")


def test_duplicate_scores_are_refused(tmp_path):
    path = write_scores(tmp_path / "scores.csv", [("gsm8k", "gsm8k", "accuracy", 1.0, 1)])
    record = {"pair": "p", "variant": "base", "scores": path}

    with pytest.raises(ValueError, match=r"twice: pair=p, variant=base, benchmark=gsm8k"):
        summarize([record, record], tmp_path / "s.csv", tmp_path / "s.md")


def test_bad_records_are_refused(tmp_path):
    with pytest.raises(ValueError, match="no score records"):
        summarize([], tmp_path / "s.csv", tmp_path / "s.md")
    with pytest.raises(ValueError, match="record 0 lacks scores"):
        summarize([{"pair": "p", "variant": "base"}], tmp_path / "s.csv", tmp_path / "s.md")
    with pytest.raises(ValueError, match="unknown variant 'lora/shadow'"):
        summarize([{"pair": "p", "variant": "lora/shadow", "scores": "x"}], tmp_path / "s.csv", tmp_path / "s.md")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("base", Variant("base", "base")),
        ("instruct", Variant("instruct", "instruct")),
        (f"{FULL}/base_ft", Variant(f"{FULL}/base_ft", "base_ft", "full", None, FULL, "sft")),
        (
            "dpo-lora-lr5e-6-r16-s1/instruct_ft",
            Variant("dpo-lora-lr5e-6-r16-s1/instruct_ft", "instruct_ft", "lora", None, "dpo-lora-lr5e-6-r16-s1", "dpo"),
        ),
        (f"{LORA}/shadow_a0.25", Variant(f"{LORA}/shadow_a0.25", "shadow", "lora", 0.25, LORA, "sft")),
    ],
)
def test_variant_names_parse(name, expected):
    assert Variant.parse(name) == expected


def test_plot_is_written(tmp_path):
    scores = {**SCORES, "llama": {"instruct": {"gsm8k": 25.0}, f"{LORA}/shadow_a1": {"gsm8k": 27.0}}}
    frame = summarize(records_for(tmp_path, scores), tmp_path / "s.csv", tmp_path / "s.md")

    out = plot_scores(frame, tmp_path / "plots" / "scores.png")

    assert out == tmp_path / "plots" / "scores.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out.stat().st_size > 10_000
    assert [p.name for p in out.parent.iterdir()] == ["scores.png"]


def test_plot_accepts_the_summary_read_back_from_csv(summary, tmp_path):
    out = plot_scores(pd.read_csv(tmp_path / "summary.csv"), tmp_path / "scores.png")

    assert out.stat().st_size > 10_000


def test_summary_quotes_sigma_and_draws_the_plot(tmp_path):
    scores = tmp_path / "scores.csv"
    scores.write_text("benchmark,dataset,metric,score,num_examples\ndemo_task,demo_task,exact_match,50.0,10\n")
    similarity_csv = tmp_path / "similarity.csv"
    similarity_csv.write_text(
        "level,name,layer,numel,sum_abs_diff,sum_abs_a,sum_abs_b,sigma\n"
        "tensor,model.layers.0.mlp.up_proj.weight,0,4,1,10,10,0.05\n"
        "overall,overall,,4,,,,0.0397\n"
    )
    records = [{"pair": "demo", "variant": variant, "scores": scores} for variant in ("base", "instruct")]
    summarize(
        records,
        tmp_path / "s.csv",
        tmp_path / "s.md",
        out_png=tmp_path / "plots" / "scores.png",
        similarity={"demo": similarity_csv},
    )
    assert "sigma = 3.97%" in (tmp_path / "s.md").read_text()
    assert (tmp_path / "plots" / "scores.png").read_bytes().startswith(b"\x89PNG")


def test_similarity_without_overall_row_is_named(tmp_path):
    similarity_csv = tmp_path / "similarity.csv"
    similarity_csv.write_text("level,sigma\ntensor,0.1\n")
    with pytest.raises(ValueError, match="similarity.csv"):
        overall_sigma(similarity_csv)


def test_markdown_states_the_seed_when_given(tmp_path):
    records = records_for(tmp_path / "results", SCORES)
    summarize(records, tmp_path / "seeded.csv", tmp_path / "seeded.md", seed=7)
    summarize(records, tmp_path / "plain.csv", tmp_path / "plain.md")
    seeded, plain = (tmp_path / "seeded.md").read_text(), (tmp_path / "plain.md").read_text()
    assert "seed 7 (the config's `seed`)" in seeded.splitlines()[2]
    assert "seed" not in plain.lower()
    assert seeded.split("\n## ", 1)[1] == plain.split("\n## ", 1)[1]  # the tables are the same
