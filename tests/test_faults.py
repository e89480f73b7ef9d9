"""Faults and secrets, measured on real workflow runs: a hub token set in the environment
reaches no file the run writes, and a second run in the same folder is refused."""

import os
import shutil
import signal
import subprocess
import time

import pytest
import yaml
from conftest import FAKE_HUB_TOKEN, ROOT, snakemake, snakemake_command
from delta_fixtures import llama_config, random_model, save


@pytest.mark.slow
def test_the_hub_token_reaches_no_file_of_a_whole_run(demo_run):
    """The demo ran with HF_TOKEN set (conftest): search every log, config, manifest and result."""
    searched, hits = 0, []
    for folder, _, names in os.walk(demo_run):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            searched += 1
            with open(path, "rb") as handle:
                if FAKE_HUB_TOKEN.encode() in handle.read():
                    hits.append(os.path.relpath(path, demo_run))
    assert searched > 100
    assert hits == []


@pytest.mark.slow
def test_a_second_run_in_the_same_folder_is_refused_and_the_first_goes_on(tmp_path):
    command, env = snakemake_command(tmp_path, "--cores", "1", "data/demo/base/model")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        locks = tmp_path / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())):
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        second = snakemake(tmp_path, "--cores", "1", "data/demo/base/model", check=False)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
        assert first.poll() is None, "the refused run must not disturb the running one"
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
        first.wait(timeout=120)


@pytest.mark.slow
@pytest.mark.bad_input("checkpoint", caught="job")
def test_a_truncated_input_model_after_a_finished_run_stops_the_next_graft_naming_the_file(demo_run, tmp_path):
    """Snakemake sees no change inside a model folder, so the finished run stays finished; the
    next job that reads the folder (a new graft strength here) finds the damage and names the file."""
    shutil.copytree(demo_run, tmp_path, symlinks=True, dirs_exist_ok=True)
    produced = {path: path.read_bytes() for path in (tmp_path / "results").rglob("*") if path.is_file()}
    weights = tmp_path / "data" / "demo" / "instruct" / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    result = snakemake(tmp_path, "--cores", "2", "--config", "graft={alphas: [1.0, 1.5]}", check=False)
    assert result.returncode != 0
    logs = [path.read_text() for path in (tmp_path / "logs" / "delta" / "demo").rglob("graft_a1.5.log")]
    assert logs and all("data/demo/instruct/model/model.safetensors" in log and "truncated" in log for log in logs)
    assert not list((tmp_path / "results" / "demo").glob("*/shadow_a1.5"))
    for path, data in produced.items():  # nothing the finished run produced was removed or changed
        assert path.read_bytes() == data, path


@pytest.mark.slow
@pytest.mark.bad_input("model", caught="check")
def test_a_pair_of_two_architectures_stops_before_any_training(tmp_path):
    base = save(random_model(llama_config(), seed=0), tmp_path / "models" / "base")
    instruct = save(random_model(llama_config(hidden_size=48), seed=1), tmp_path / "models" / "instruct")
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["models"] = {
        "b": {"source": "local", "path": str(base)},
        "i": {"source": "local", "path": str(instruct)},
    }
    config["pairs"] = {"mixed": {"base": "b", "instruct": "i", "template": "qwen"}}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "--cores", "2", "--configfile", str(tmp_path / "experiment.yaml"), check=False)
    assert result.returncode != 0
    log = (tmp_path / "logs" / "check" / "mixed.log").read_text()
    assert "differ in hidden_size: 32 against 48" in log
    assert not (tmp_path / "logs" / "train").exists(), "no training job may start"
