"""The download_model rule, driven by Snakemake against a local stand-in for the Hub."""

import json
import os

import numpy as np
import pytest
import yaml
from conftest import ROOT, snakemake
from hub_fixtures import FakeHub
from safetensors.numpy import save as safetensors_bytes

FAKE_TOKEN = "hf_WorkflowTestToken0123456789abcdef"


@pytest.mark.slow
def test_download_rule_pins_the_revision_and_never_logs_the_token(tmp_path, monkeypatch):
    files = {
        "config.json": json.dumps({"model_type": "qwen2"}).encode(),
        "tokenizer_config.json": b"{}",
        "model.safetensors": safetensors_bytes({"w": np.arange(4, dtype=np.float32)}),
    }
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["models"]["hub-base"] = {"source": "hub", "repo": "org/tiny-base", "revision": "v1"}
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    with FakeHub() as hub:
        commit = hub.add_commit("org/tiny-base", files, refs=("v1",))
        monkeypatch.setenv("HF_ENDPOINT", hub.endpoint)
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        result = snakemake(
            tmp_path, "data/models/hub-base", "--cores", "1", "--configfile", str(tmp_path / "experiment.yaml")
        )
        assert {request.authorization for request in hub.requests} == {f"Bearer {FAKE_TOKEN}"}
    manifest = json.loads((tmp_path / "data" / "models" / "hub-base" / "shadowft_manifest.json").read_text())
    assert manifest["source"]["commit"] == commit
    assert (tmp_path / "data" / "models" / "hub-base" / "model.safetensors").read_bytes() == files["model.safetensors"]
    written = [result.stdout, result.stderr]
    for folder, _, names in os.walk(tmp_path):
        written += [open(os.path.join(folder, name), "rb").read().decode(errors="replace") for name in names]
    assert not any(FAKE_TOKEN in text for text in written)
