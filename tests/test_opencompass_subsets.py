"""A real OpenCompass run of a benchmark made of many datasets: BBH, 27 subsets, two evaluators.

The data is written here in OpenCompass's own layout under a temporary COMPASS_DATA_CACHE
(data/BBH/data/<subset>.json, a few rows each) and scored by BBH's own evaluators; the
scores are read from OpenCompass's own output folders. The model always answers "Yes"
(opencompass_fixtures), which BBH's answer extraction reads as "Yes" in the free-form
subsets and as the letter "Y" in the multiple-choice ones, the same as it reads a "Yes"
target; a "No" target is read as "No" / "N". So each subset's score is fixed by how many
of its targets are "Yes", and the subsets get different row counts and scores: a row,
score or count attributed to the wrong subset shows.
"""

import json

import pytest
from conftest import ROOT, VENVS
from opencompass_fixtures import constant_answer_model, evaluate_in_eval_env
from scoring_fixtures import BBH_TASKS

from shadowft.evaluation.results import read_scores
from shadowft.evaluation.run import RUN_CONFIG_FILE

EVAL_PYTHON = VENVS / "eval" / "bin" / "python"
MAX_OUT_LEN = 4

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EVAL_PYTHON.exists(), reason=f"no eval environment at {EVAL_PYTHON}"),
]


def subset_targets(index: int) -> list[str]:
    """1 to 3 rows, of which 0 to all are "Yes", varying with the subset's position."""
    rows = 1 + index % 3
    yes = index % (rows + 1)
    return ["Yes"] * yes + ["No"] * (rows - yes)


def test_bbh_subsets_scored_by_their_own_evaluators(tmp_path):
    model = constant_answer_model(tmp_path / "model", "Yes")
    data = tmp_path / "cache" / "data" / "BBH" / "data"
    data.mkdir(parents=True)
    expected = {}
    for index, subset in enumerate(BBH_TASKS):
        targets = subset_targets(index)
        examples = [{"input": f"Question {row} of {subset}?", "target": target} for row, target in enumerate(targets)]
        (data / f"{subset}.json").write_text(json.dumps({"examples": examples}))
        expected[f"bbh-{subset}"] = (100 * targets.count("Yes") / len(targets), len(targets))
    assert sorted({score for score, _ in expected.values()}) == pytest.approx([0, 100 / 3, 50, 200 / 3, 100])

    benchmark = {"name": "bbh", "kind": "opencompass", "config": "bbh_gen", "max_out_len": MAX_OUT_LEN}
    result = evaluate_in_eval_env(
        EVAL_PYTHON, ROOT, tmp_path, model, benchmark, "--data-cache", str(tmp_path / "cache"), "--batch-size", "4"
    )
    assert result.returncode == 0, result.stderr[-3000:]

    (run_dir,) = (tmp_path / "work").iterdir()
    abbrs = [dataset["abbr"] for dataset in json.loads((run_dir / RUN_CONFIG_FILE).read_text())["datasets"]]
    assert sorted(abbrs) == sorted(expected)
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    answers = {record["prediction"] for records in predictions.values() for record in records.values()}
    assert answers == {" ".join(["Yes"] * MAX_OUT_LEN)}, "the premise: the model answers Yes to everything"

    rows = read_scores(tmp_path / "out" / "scores.csv")
    assert [row["dataset"] for row in rows] == abbrs, "one row per subset, in the config's order"
    assert {row["benchmark"] for row in rows} == {"bbh"} and {row["metric"] for row in rows} == {"score"}
    assert {row["dataset"]: row["score"] for row in rows} == pytest.approx({k: v[0] for k, v in expected.items()})
    assert {row["dataset"]: row["num_examples"] for row in rows} == {k: v[1] for k, v in expected.items()}
