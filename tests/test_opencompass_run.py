"""The real OpenCompass, in .venvs/eval, scoring the demo's tiny model on CPU.

A random model answers nothing right, so the exact-match benchmark is made of the answers
the model gives (greedy decoding in transformers, here): it must score 100, and the same
answers shuffled must score exactly the share that the shuffle left equal. The standard
GSM8K run uses a model whose answer is known in advance (opencompass_fixtures), so its
score is known too.
"""

import json
import shutil

import pytest
from conftest import DEMO_FOLDERS, ROOT, VENVS
from opencompass_fixtures import constant_answer_model, evaluate_in_eval_env

from shadowft.evaluation.results import read_scores
from shadowft.evaluation.run import RUN_CONFIG_FILE, RUN_LOG_FILE

EVAL_PYTHON = VENVS / "eval" / "bin" / "python"
MAX_OUT_LEN = 8
NUM_QUESTIONS = 6

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EVAL_PYTHON.exists(), reason=f"no eval environment at {EVAL_PYTHON}"),
]


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    from shadowft.demo.build import build_demo

    root = tmp_path_factory.mktemp("opencompass_demo")
    build_demo(*(root / folder for folder in DEMO_FOLDERS))
    return root


@pytest.fixture(scope="session")
def model_answers(demo):
    """(question, the model's own greedy answer) for the first demo questions."""
    lines = (demo / "demo_task" / "eval.jsonl").read_text().splitlines()[:NUM_QUESTIONS]
    questions = [json.loads(line)["question"] for line in lines]
    answers = greedy_answers(demo / "init", questions, MAX_OUT_LEN)
    assert len(set(answers)) > 1, "the model answers every question alike; shuffling would prove nothing"
    return list(zip(questions, answers, strict=True))


def greedy_answers(model_dir, questions, max_new_tokens):
    """What OpenCompass's chat model should answer: the user turn through the chat template,
    greedy, the text up to the first stop word, stripped."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    stop_words = {tokenizer.decode(token) for token in (eos if isinstance(eos, list) else [eos])} | {
        tokenizer.eos_token
    }
    answers = []
    for question in questions:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
        )
        inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                num_beams=1,
                pad_token_id=tokenizer.pad_token_id,
            )
        answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :])
        for stop in stop_words:
            answer = answer.split(stop)[0]
        answers.append(answer.strip())
    return answers


def write_qa(path, pairs):
    path.write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in pairs))
    return path


def evaluate(tmp_path, model_dir, benchmark, *extra):
    """`python -m shadowft.evaluation evaluate` in the eval environment, run from tmp_path
    with relative output paths, as Snakemake gives them."""
    return evaluate_in_eval_env(EVAL_PYTHON, ROOT, tmp_path, model_dir, benchmark, *extra)


def run_dir(tmp_path):
    (folder,) = (tmp_path / "work").iterdir()
    return folder


def test_own_answers_score_100(tmp_path, demo, model_answers):
    benchmark = {
        "name": "demo_task",
        "kind": "custom",
        "path": str(write_qa(tmp_path / "eval.jsonl", model_answers)),
        "max_out_len": MAX_OUT_LEN,
    }
    result = evaluate(tmp_path, demo / "init", benchmark, "--batch-size", "1")
    assert result.returncode == 0, result.stderr

    assert read_scores(tmp_path / "out" / "scores.csv") == [
        {
            "benchmark": "demo_task",
            "dataset": "demo_task",
            "metric": "exact_match",
            "score": 100.0,
            "num_examples": NUM_QUESTIONS,
        }
    ]
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())["demo_task"]
    asked = [record["origin_prompt"] for record in predictions.values()]
    assert asked == [[{"role": "HUMAN", "prompt": q}] for q, _ in model_answers], (
        "the exact question, no trailing newline"
    )
    assert [record["prediction"].strip() for record in predictions.values()] == [a for _, a in model_answers]

    assert (run_dir(tmp_path) / RUN_CONFIG_FILE).is_file()
    assert (run_dir(tmp_path) / RUN_LOG_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.jsonl", "out", "work"], (
        "OpenCompass's scratch files stay in its run folder"
    )


def test_shuffled_answers_score_lower(tmp_path, demo, model_answers):
    questions, answers = zip(*model_answers, strict=True)
    shuffled = list(zip(questions, answers[1:] + answers[:1], strict=True))
    benchmark = {
        "name": "demo_task",
        "kind": "custom",
        "path": str(write_qa(tmp_path / "eval.jsonl", shuffled)),
        "max_out_len": MAX_OUT_LEN,
    }
    result = evaluate(tmp_path, demo / "init", benchmark)
    assert result.returncode == 0, result.stderr
    (row,) = read_scores(tmp_path / "out" / "scores.csv")
    # the model still answers answers[i]; it is right where the shuffled answer is the same text
    still_right = sum(answer == expected for answer, (_, expected) in zip(answers, shuffled, strict=True))
    assert row["score"] == pytest.approx(100 * still_right / NUM_QUESTIONS)
    assert row["score"] < 100.0
    assert row["num_examples"] == NUM_QUESTIONS


def test_broken_model_fails_naming_the_log(tmp_path, demo, model_answers):
    broken = tmp_path / "broken_model"
    shutil.copytree(demo / "init", broken)
    (broken / "model.safetensors").unlink()
    benchmark = {
        "name": "demo_task",
        "kind": "custom",
        "path": str(write_qa(tmp_path / "eval.jsonl", model_answers)),
        "max_out_len": MAX_OUT_LEN,
    }
    result = evaluate(tmp_path, broken, benchmark)

    assert result.returncode == 1
    log_path = run_dir(tmp_path) / RUN_LOG_FILE
    assert "benchmark demo_task" in result.stderr
    assert f"read {log_path}" in result.stderr
    assert "model.safetensors" in result.stderr, "the log's last lines show the cause"
    assert not (tmp_path / "out").exists(), "no scores from a failed run"


def test_standard_dataset_from_the_data_cache(tmp_path):
    # A two-question GSM8K in OpenCompass's cache layout: the standard config, its
    # prompts and its evaluator run end to end, offline. The model answers "4 4 4 4" to
    # everything, which GSM8K's answer extraction reads as 4: right for the first
    # question, wrong for the second.
    model = constant_answer_model(tmp_path / "model", "4")
    gsm8k = tmp_path / "cache" / "data" / "gsm8k"
    gsm8k.mkdir(parents=True)
    for split in ("train", "test"):
        write_qa(
            gsm8k / f"{split}.jsonl",
            [("What is 2 plus 2?", "2 + 2 = 4\n#### 4"), ("What is 3 plus 4?", "3 + 4 = 7\n#### 7")],
        )
    benchmark = {"name": "gsm8k", "kind": "opencompass", "config": "gsm8k_gen", "max_out_len": 4}
    result = evaluate(tmp_path, model, benchmark, "--data-cache", str(tmp_path / "cache"))
    assert result.returncode == 0, result.stderr

    (row,) = read_scores(tmp_path / "out" / "scores.csv")
    assert (row["benchmark"], row["dataset"], row["metric"], row["num_examples"]) == ("gsm8k", "gsm8k", "accuracy", 2)
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())["gsm8k"]
    assert [record["prediction"] for record in predictions.values()] == ["4 4 4 4"] * 2, "the premise"
    assert row["score"] == 50.0
    config = json.loads((run_dir(tmp_path) / RUN_CONFIG_FILE).read_text())
    assert config["datasets"][0]["infer_cfg"]["inferencer"]["max_out_len"] == 4
    assert "meta_template" not in config["models"][0], "standard benchmarks keep OpenCompass's prompt format"
