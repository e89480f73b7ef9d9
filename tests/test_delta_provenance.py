"""Provenance: a first graft of downloaded models takes their sha256 from the download manifest, once per file."""

import hashlib
import os
import shutil
import time

import pytest
from delta_fixtures import _private_hash_cache, llama, read_json  # noqa: F401

from shadowft.data.hub import link_local_model
from shadowft.engine.extraction import Delta
from shadowft.engine.grafting import graft
from shadowft.engine.provenance import recorded_digests

pytest.importorskip("torch")


def counted_hashing(monkeypatch):
    import shadowft.engine.provenance as provenance

    hashed = []
    real = provenance.sha256_file
    monkeypatch.setattr(provenance, "sha256_file", lambda path: hashed.append(path.name) or real(path))
    monkeypatch.setenv("SHADOWFT_CACHE_DIR", "")  # no cache: only a manifest can spare the hashing
    return hashed


def test_first_graft_of_downloaded_models_hashes_nothing(llama, tmp_path, monkeypatch):
    models = {role: tmp_path / role for role in ("base", "tuned", "instruct")}
    for role, path in models.items():
        link_local_model(getattr(llama, role), path)
    hashed = counted_hashing(monkeypatch)
    with Delta.from_models(models["base"], models["tuned"]) as delta:
        manifest = graft(models["instruct"], delta, tmp_path / "out", progress=False)
    assert hashed == []
    for role in models:
        for name, described in manifest["inputs"][role]["files"].items():
            assert described["sha256"] == hashlib.sha256((models[role] / name).read_bytes()).hexdigest()


def test_a_file_changed_after_the_download_is_hashed_again(llama, tmp_path):
    shutil.copytree(llama.instruct, tmp_path / "source")
    time.sleep(0.05)  # file times are coarse: the copies are older than the manifest by more than a tick
    link_local_model(tmp_path / "source", tmp_path / "instruct")
    config, weights = (tmp_path / "instruct" / "config.json"), sorted((tmp_path / "instruct").glob("*.safetensors"))[0]
    assert {config.absolute(), weights.absolute()} <= recorded_digests(tmp_path / "instruct").keys()
    time.sleep(0.05)
    (tmp_path / "source" / "config.json").write_text((tmp_path / "source" / "config.json").read_text() + " ")
    os.chmod(tmp_path / "source" / weights.name, 0o600)  # a metadata change counts too
    recorded = recorded_digests(tmp_path / "instruct")
    assert config.absolute() not in recorded and weights.absolute() not in recorded and recorded


def test_no_or_foreign_manifest_gives_no_digests(llama, tmp_path):
    assert recorded_digests(llama.instruct) == {}
    (tmp_path / "shadowft_manifest.json").write_text('{"format": "shadowft-graft", "files": ["model.safetensors"]}')
    assert recorded_digests(tmp_path) == {}
    (tmp_path / "shadowft_manifest.json").write_text("not json")
    assert recorded_digests(tmp_path) == {}
