"""The real LLaMA-Factory in .venvs/train on the demo: LoRA and full SFT, resume after a kill,
LoRA export, unknown keys, and identical demo tokenization in the train and eval environments."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import DEMO_FOLDERS
from safetensors.torch import load_file

from shadowft.demo import build as demo
from shadowft.training import arguments as lf_args

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venvs"
PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def venv_python(name):
    python = VENVS / name / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} is not built")
    return str(python)


def environment():
    # The workflow's way into the train env: the repository on PYTHONPATH, one thread per job.
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def shadowft_llamafactory(*args, timeout=300):
    return subprocess.run(
        [venv_python("train"), "-m", "shadowft.training", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment(),
        cwd=ROOT,
    )


def succeed(result):
    assert result.returncode == 0, result.stderr[-6000:]
    return result


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    demo.build_demo(*(root / folder for folder in DEMO_FOLDERS))
    return root


def demo_task_settings(tuning):
    """The demo experiment's own task fine-tuning settings (config/config.yaml): its SFT
    hyper-parameters, and the first learning rate and rank of its sweep lists."""
    training = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())["training"]
    hyperparameters = training["hyperparameters"]
    return {
        "overrides": {**hyperparameters.get("common", {}), **hyperparameters.get("sft", {})},
        "learning_rate": training["learning_rates"][tuning][0],
        "lora_rank": training["lora_ranks"][0] if tuning == "lora" else None,
    }


def task_config(built, directory, tuning, **overrides):
    """A demo task fine-tune of the random init, cut to a few steps."""
    directory.mkdir(parents=True, exist_ok=True)
    settings = demo_task_settings(tuning)
    args = lf_args.training_arguments(
        model_dir=built / "init",
        dataset_dir=built / "demo_task",
        dataset=demo.TASK_DATASET,
        template=demo.TEMPLATE,
        tuning=tuning,
        output_dir=directory / "work",
        overrides={**settings["overrides"], "logging_steps": 1, **overrides},
        learning_rate=settings["learning_rate"],
        lora_rank=settings["lora_rank"],
    )
    config = directory / "train.yaml"
    lf_args.write_yaml(args, config)
    return config


@pytest.fixture(scope="module")
def lora_run(built, tmp_path_factory):
    directory = tmp_path_factory.mktemp("lora")
    config = task_config(built, directory, "lora", max_steps=6, save_steps=3)
    result = succeed(shadowft_llamafactory("train", config, directory / "model"))
    return directory, result


def test_lora_run_publishes_an_adapter_over_every_projection(lora_run, built):
    directory, _ = lora_run
    model = directory / "model"
    config = json.loads((model / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (8, 16)
    assert set(config["target_modules"]) == PROJECTIONS
    assert Path(config["base_model_name_or_path"]) == built / "init"
    adapter = load_file(model / "adapter_model.safetensors")
    modules = {name.rsplit(".lora_", 1)[0] for name in adapter}
    assert len(modules) == len(PROJECTIONS) * demo.MODEL_SHAPE["num_hidden_layers"]
    assert all(adapter[name].abs().sum() > 0 for name in adapter if ".lora_B." in name)  # B starts at zero
    assert json.loads((model / "trainer_state.json").read_text())["global_step"] == 6


def test_lora_run_leaves_no_checkpoints_or_work_dir(lora_run):
    directory, _ = lora_run
    assert not (directory / "work").exists()
    assert not list((directory / "model").glob("checkpoint-*"))
    assert sorted(p.name for p in directory.iterdir()) == ["model", "train.yaml"]


def test_export_merges_the_adapter_exactly(lora_run, built, tmp_path):
    directory, _ = lora_run
    succeed(
        shadowft_llamafactory(
            "export",
            "--model",
            built / "init",
            "--adapter",
            directory / "model",
            "--template",
            demo.TEMPLATE,
            tmp_path / "merged",
        )
    )
    merged = load_file(tmp_path / "merged" / "model.safetensors")
    init = load_file(built / "init" / "model.safetensors")
    adapter = load_file(directory / "model" / "adapter_model.safetensors")
    scale = 16 / 8
    for name, weight in init.items():
        module = name.removesuffix(".weight")
        if module.rsplit(".", 1)[-1] in PROJECTIONS:
            a = adapter[f"base_model.model.{module}.lora_A.weight"]
            b = adapter[f"base_model.model.{module}.lora_B.weight"]
            torch.testing.assert_close(merged[name], weight + scale * b @ a, rtol=0, atol=1e-6)
        else:
            assert torch.equal(merged[name], weight), name
    config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert config.get("torch_dtype", config.get("dtype")) == "float32"  # the base's dtype, not bf16
    assert (tmp_path / "merged" / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["merged"]


def test_full_run_publishes_a_loadable_model_with_the_chat_template(built, tmp_path):
    config = task_config(built, tmp_path, "full", max_steps=3, save_steps=3)
    succeed(shadowft_llamafactory("train", config, tmp_path / "model"))
    model = tmp_path / "model"
    weights = load_file(model / "model.safetensors")
    init = load_file(built / "init" / "model.safetensors")
    assert weights.keys() == init.keys()
    assert not torch.equal(
        weights["model.layers.0.self_attn.q_proj.weight"], init["model.layers.0.self_attn.q_proj.weight"]
    )
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (model / name).read_bytes() == (built / "init" / name).read_bytes(), name
    # The Trainer rewrites generation_config.json in its own form; greedy decoding must survive.
    generation = json.loads((model / "generation_config.json").read_text())
    im_end = json.loads((built / "init" / "generation_config.json").read_text())["eos_token_id"]
    assert generation["eos_token_id"] in (im_end, [im_end])
    assert not generation.get("do_sample", False)


def test_a_killed_run_resumes_from_its_checkpoint(built, tmp_path):
    config = task_config(built, tmp_path, "lora", max_steps=40, save_steps=4)
    work = tmp_path / "work"
    first = subprocess.Popen(
        [venv_python("train"), "-m", "shadowft.training", "train", str(config), str(tmp_path / "model")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=environment(),
        cwd=ROOT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not list(work.glob("checkpoint-*/trainer_state.json")):
            assert first.poll() is None, "the run ended before it saved a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (tmp_path / "model").exists()

    second = succeed(shadowft_llamafactory("train", config, tmp_path / "model"))
    assert "shadowft: resuming" in second.stderr
    assert "Resuming training from" in second.stdout + second.stderr  # LLaMA-Factory's own word
    state = json.loads((tmp_path / "model" / "trainer_state.json").read_text())
    assert state["global_step"] == 40
    logged_steps = [
        json.loads(line)["current_steps"]
        for line in (tmp_path / "model" / "trainer_log.jsonl").read_text().splitlines()
    ]
    assert logged_steps[0] == 1 and logged_steps[-1] == 40  # one log over both attempts
    assert not work.exists()


@pytest.mark.bad_input("LLaMA-Factory", caught="job")
def test_an_unknown_key_fails_before_llamafactory_runs(built, tmp_path):
    config = task_config(built, tmp_path, "lora", learning_rat=1e-3)
    result = shadowft_llamafactory("train", config, tmp_path / "model", timeout=120)
    assert result.returncode != 0
    assert "'learning_rat' (did you mean 'learning_rate'?)" in result.stderr
    assert not (tmp_path / "work").exists()


TOKENIZE = """
import json, sys
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
ids = []
for line in open(sys.argv[2]):
    record = json.loads(line)
    messages = [{"role": "user", "content": record["question"]}]
    ids.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True))
    ids.append(tokenizer(record["answer"])["input_ids"])
print(json.dumps(ids))
"""


def test_demo_tokenizer_gives_the_same_ids_in_every_environment(built):
    ids = {}
    for name in ("core", "train", "eval"):
        python = sys.executable if name == "core" else venv_python(name)
        result = succeed(
            subprocess.run(
                [python, "-c", TOKENIZE, str(built / "init"), str(built / "demo_task" / demo.EVAL_FILE)],
                capture_output=True,
                text=True,
                timeout=120,
                env=environment(),
            )
        )
        ids[name] = json.loads(result.stdout)
    assert len(ids["core"]) == 2 * demo.SIZES["task_eval"]
    assert ids["train"] == ids["core"]
    assert ids["eval"] == ids["core"]
