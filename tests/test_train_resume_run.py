"""A training job killed after a checkpoint: the workflow's rerun resumes from it, and the
final adapter (LoRA) or model (full) is the one an uninterrupted run with the same seed trains,
bit for bit.

Cheap: the pair is the demo's random initial model twice (no pre-training, no chat tuning),
and one LoRA and one full run on base are trained for a few steps, through the real workflow.
The uninterrupted run trains in a warm worker (shadowft.workers), the killed one in processes
of its own, which are what an out-of-memory kill or a lost node ends."""

import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import torch
import yaml
from conftest import DEMO_FOLDERS, ROOT, snakemake, snakemake_command
from safetensors.torch import load_file

from shadowft.demo import build as demo
from shadowft.workflow.config import validate_config
from shadowft.workflow.sweep import runs

pytestmark = pytest.mark.slow

# 12 steps, a checkpoint every 4: the kill after the first leaves 8 steps to resume.
MAX_STEPS, SAVE_STEPS = 12, 4


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A config training one LoRA run on the demo's initial model, and the run's name."""
    root = tmp_path_factory.mktemp("resume")
    built = root / "built"
    demo.build_demo(*(built / folder for folder in DEMO_FOLDERS))
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["models"] = {
        "init-base": {"source": "local", "path": str(built / "init")},
        "init-instruct": {"source": "local", "path": str(built / "init")},
    }
    config["pairs"] = {"init": {"base": "init-base", "instruct": "init-instruct", "template": demo.TEMPLATE}}
    config["datasets"] = {demo.TASK_DATASET: {"source": "local", "path": str(built / demo.TASK_DATASET)}}
    config["training"].update(tunings=["lora", "full"], stages=["sft"])
    config["training"].pop("preference_dataset")
    config["training"]["hyperparameters"]["common"].update(max_steps=MAX_STEPS, save_steps=SAVE_STEPS, logging_steps=1)
    config["evaluation"]["benchmarks"] = {"demo_task": config["evaluation"]["benchmarks"]["demo_task"]}
    config["graft"]["alphas"] = [1.0]
    file = root / "experiment.yaml"
    file.write_text(yaml.safe_dump(config))
    return file, {run.tuning: run.name for run in runs(validate_config(yaml.safe_load(file.read_text())))}


def target(run):
    """The trained adapter's folder, as Snakemake names it (relative to the working directory)."""
    return f"results/init/{run}/train_base/model"


def trained_adapter(workdir, run):
    return workdir / target(run)


def train(workdir, configfile, run):
    # The target first: --configfile takes every argument after it.
    return snakemake(workdir, target(run), "--cores", "1", "--configfile", str(configfile))


def kill_training_after_first_checkpoint(workdir, configfile, run):
    """Start the workflow, wait for the training job's first whole checkpoint, SIGKILL every
    process of the job (as an out-of-memory kill or a lost node would), and let Snakemake fail."""
    command, env = snakemake_command(workdir, target(run), "--cores", "1", "--configfile", str(configfile))
    env["SHADOWFT_WORKERS"] = "0"
    workflow = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    work = workdir / "results" / "init" / run / "train_base" / "work"
    deadline = time.monotonic() + 600
    try:
        while not list(work.glob("checkpoint-*/trainer_state.json")):
            assert workflow.poll() is None, "the workflow ended before a checkpoint was saved"
            assert time.monotonic() < deadline, "no checkpoint within 600 s"
            time.sleep(0.05)
        for process in psutil.Process(workflow.pid).children(recursive=True):
            process.send_signal(signal.SIGKILL)
        output, _ = workflow.communicate(timeout=120)
    finally:
        if workflow.poll() is None:
            os.kill(workflow.pid, signal.SIGKILL)
            workflow.wait()
    assert workflow.returncode != 0, output[-3000:]
    return sorted(path.parent.name for path in work.glob("checkpoint-*/trainer_state.json"))


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_a_killed_training_resumes_and_trains_the_same_weights(experiment, tmp_path, tuning):
    configfile, runs_by_tuning = experiment
    run = runs_by_tuning[tuning]
    uninterrupted, interrupted = tmp_path / "uninterrupted", tmp_path / "interrupted"
    train(uninterrupted, configfile, run)

    checkpoints = kill_training_after_first_checkpoint(interrupted, configfile, run)
    assert checkpoints and checkpoints[-1] != f"checkpoint-{MAX_STEPS}", checkpoints
    assert not trained_adapter(interrupted, run).exists()
    train(interrupted, configfile, run)

    work = f"results/init/{run}/train_base/work"
    log = (interrupted / "logs" / "train" / "init" / run / "base.log").read_text()
    assert f"shadowft: resuming {work} from {checkpoints[-1]}" in log
    assert f"Resuming training from {work}/{checkpoints[-1]}." in log  # LLaMA-Factory's own word
    launch = json.loads((trained_adapter(interrupted, run) / "shadowft_launch.json").read_text())
    assert launch["resumed_from"] == checkpoints[-1]
    state = json.loads((trained_adapter(interrupted, run) / "trainer_state.json").read_text())
    assert state["global_step"] == MAX_STEPS
    weights = "adapter_model.safetensors" if tuning == "lora" else "model.safetensors"
    expected = load_file(trained_adapter(uninterrupted, run) / weights)
    resumed = load_file(trained_adapter(interrupted, run) / weights)
    assert expected.keys() == resumed.keys()
    differences = {
        name: (expected[name].double() - resumed[name].double()).abs().max().item()
        for name in expected
        if not torch.equal(expected[name], resumed[name])
    }
    assert not differences, f"{len(differences)} of {len(expected)} tensors differ: {differences}"
