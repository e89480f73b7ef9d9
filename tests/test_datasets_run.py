"""Training data through the workflow: the paper's Shadow_2k from a fake Infinity-Instruct on the
fake hub, and local sharegpt and alpaca files, each prepared by the workflow and trained on
by LLaMA-Factory (one LoRA step on the demo models)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml
from conftest import ROOT, demo_runs, snakemake, with_demo_pair
from dataset_fixtures import (
    INFINITY_INSTRUCT,
    TRAIN_PYTHON,
    alpaca_rows,
    infinity_instruct_files,
    infinity_rows,
    parquet_files,
    sharegpt_openai_rows,
    write_jsonl,
)
from hub_fixtures import FakeHub

from shadowft.data.datasets import DATASET_INFO, ROWS_FILE
from shadowft.data.sampling import sample_rows
from shadowft.engine.layout import DATASET_MANIFEST

pytestmark = pytest.mark.slow

FAKE_TOKEN = "hf_DatasetWorkflowTestToken0123456789"


def run_paths(pair: str = "demo", run: str = demo_runs()["lora"]) -> dict[str, str]:
    """Where one training run (by default the demo's LoRA run) writes and logs."""
    return {
        "config": f"results/{pair}/{run}/train_base.yaml",
        "model": f"results/{pair}/{run}/train_base/model",
        "log": f"logs/train/{pair}/{run}/base.log",
    }


def demo_experiment(datasets: dict, dataset: str) -> dict:
    """The demo experiment training on `dataset` for one LoRA step (a config complete on its own)."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"].update(datasets)
    config["training"]["dataset"] = dataset
    config["training"]["tunings"] = ["lora"]
    config["training"]["hyperparameters"]["common"].update(max_steps=1, per_device_train_batch_size=4)
    return config


def train_once(workdir, config: dict, demo_run) -> dict:
    """Train the session's demo BASE once on the config's dataset; what LLaMA-Factory ran with, and its log."""
    with_demo_pair(workdir, demo_run)
    (workdir / "experiment.yaml").write_text(yaml.safe_dump(config))
    paths = run_paths()
    snakemake(workdir, paths["model"], "--cores", "2", "--configfile", str(workdir / "experiment.yaml"))
    arguments = yaml.safe_load((workdir / paths["model"] / "shadowft_train_args.yaml").read_text())
    return {"arguments": arguments, "log": (workdir / paths["log"]).read_text()}


def rows_of(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / ROWS_FILE).read_text().splitlines()]


def test_shadow_2k_is_downloaded_pinned_sampled_recorded_and_trained_on(tmp_path, monkeypatch, demo_run):
    files = infinity_instruct_files()
    with FakeHub() as hub:
        pinned = hub.add_commit(INFINITY_INSTRUCT, files, repo_type="dataset")
        # main moves on after the pin: the download must not see this commit.
        moved = dict(files, **parquet_files({"Gen/train-00003-of-00004.parquet": infinity_rows(50, start=900)}))
        hub.add_commit(INFINITY_INSTRUCT, moved, repo_type="dataset")
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        spec = {
            "source": "hub",
            "repo": INFINITY_INSTRUCT,
            "revision": pinned,
            "subset": "Gen",
            "format": "sharegpt",
            "sample": {"count": 40, "seed": 0},
        }
        config = demo_experiment({"shadow_2k": spec}, "shadow_2k")
        trained = train_once(tmp_path, config, demo_run)
        requests = len(hub.requests)
        assert {request.authorization for request in hub.requests} == {f"Bearer {FAKE_TOKEN}"}

        dataset = tmp_path / "data" / "datasets" / "shadow_2k"
        manifest = json.loads((dataset / DATASET_MANIFEST).read_text())
        first_rows = (dataset / ROWS_FILE).read_bytes()
        # Prepared again from the same download: the same rows, byte for byte, and nothing fetched.
        subprocess.run(["rm", "-r", str(dataset)], check=True)
        snakemake(
            tmp_path,
            str(dataset.relative_to(tmp_path)),
            "--cores",
            "1",
            "--configfile",
            str(tmp_path / "experiment.yaml"),
        )
        assert (dataset / ROWS_FILE).read_bytes() == first_rows
        assert len(hub.requests) == requests

    gen = sorted(name for name in files if name.startswith("Gen/"))
    counts = dict(zip(gen, (120, 100, 80), strict=True))
    assert manifest["source"]["commit"] == pinned
    assert manifest["source"]["repo_id"] == INFINITY_INSTRUCT
    assert [(entry["path"], entry["rows"]) for entry in manifest["source"]["files"]] == list(counts.items())
    assert manifest["sample"]["selected"] == sample_rows(counts, 40, seed=0)
    every_row = {
        name: infinity_rows(n, start=sum(list(counts.values())[: gen.index(name)])) for name, n in counts.items()
    }
    expected = [
        {"conversations": every_row[name][row]["conversations"]}
        for name, rows in manifest["sample"]["selected"].items()
        for row in rows
    ]
    assert rows_of(dataset) == expected
    assert json.loads((dataset / DATASET_INFO).read_text())["shadow_2k"]["columns"] == {"messages": "conversations"}

    # Another seed, other rows (through the rule's own command, from the same download).
    reseeded = tmp_path / "reseeded"
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [str(TRAIN_PYTHON), "-m", "shadowft.data", "prepare", "shadow_2k"]
    other = {**spec, "sample": {"count": 40, "seed": 1}}
    subprocess.run([*command, json.dumps(other), str(tmp_path / "data/downloads/shadow_2k"), str(reseeded)],
                   check=True, env=environment)  # fmt: skip
    assert rows_of(reseeded) != rows_of(dataset) and len(rows_of(reseeded)) == 40

    # LLaMA-Factory trained on the prepared folder, every sampled row kept.
    assert trained["arguments"]["dataset"] == "shadow_2k"
    assert trained["arguments"]["dataset_dir"] == "data/datasets/shadow_2k"
    assert "Num examples = 40" in trained["log"]
    written = [open(os.path.join(folder, name), "rb").read().decode(errors="replace")
               for folder, _, names in os.walk(tmp_path) for name in names]  # fmt: skip
    assert not any(FAKE_TOKEN in text for text in written)


def test_local_sharegpt_and_alpaca_files_register_and_train_on_the_demo(tmp_path, demo_run):
    chat = write_jsonl(tmp_path / "chat.jsonl", sharegpt_openai_rows(24))
    (tmp_path / "tasks.parquet").write_bytes(parquet_files({"tasks": alpaca_rows(18)})["tasks"])
    datasets = {
        "local_chat": {"source": "local", "file": str(chat), "format": "sharegpt"},
        "local_tasks": {"source": "local", "file": "tasks.parquet", "format": "alpaca", "sample": {"count": 12}},
    }

    chat_run = train_once(tmp_path, demo_experiment(datasets, "local_chat"), demo_run)
    info = json.loads((tmp_path / "data/datasets/local_chat" / DATASET_INFO).read_text())
    assert info["local_chat"]["tags"]["role_tag"] == "role"
    assert chat_run["arguments"]["dataset_dir"] == "data/datasets/local_chat"
    assert "Num examples = 24" in chat_run["log"]

    tasks_run = train_once(tmp_path, demo_experiment(datasets, "local_tasks"), demo_run)
    info = json.loads((tmp_path / "data/datasets/local_tasks" / DATASET_INFO).read_text())
    assert info["local_tasks"]["formatting"] == "alpaca"
    assert tasks_run["arguments"]["dataset"] == "local_tasks"
    assert "Num examples = 12" in tasks_run["log"]


def test_a_bad_local_file_stops_the_workflow_before_training(tmp_path):
    rows = sharegpt_openai_rows(5)
    rows[3]["conversations"].reverse()
    chat = write_jsonl(tmp_path / "chat.jsonl", rows)
    config = demo_experiment({"local_chat": {"source": "local", "file": str(chat)}}, "local_chat")
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(
        tmp_path, run_paths()["model"], "--cores", "1", "--configfile", str(tmp_path / "experiment.yaml"), check=False
    )
    assert result.returncode != 0
    log = (tmp_path / "logs/prepare_dataset/local_chat.log").read_text()
    assert f"{chat}, row 3 (line 4): conversations[0].role: role 'assistant' out of turn" in log
    assert [path.name for path in (tmp_path / "results").iterdir()] == ["checks"]  # only the names' check ran
