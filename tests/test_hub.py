"""download_model against a real HTTP server speaking the Hub protocol.

huggingface_hub's own client does the requests; only the server is ours (hub_fixtures.FakeHub).
"""

from __future__ import annotations

import hashlib
import json
import logging
import traceback

import numpy as np
import pytest
from hub_fixtures import FakeHub
from safetensors.numpy import save as safetensors_bytes

from shadowft.data.hub import MANIFEST_NAME, download_model
from shadowft.data.selection import ModelSourceError
from shadowft.data.transfer import HubError

TOKEN_ENV = "SHADOWFT_TEST_HUB_TOKEN"
FAKE_TOKEN = "hf_FakeTokenForShadowftTests0123456789"


def model_files(hidden_size: int = 4, **extra: bytes) -> dict[str, bytes]:
    files = {
        "config.json": json.dumps({"model_type": "qwen2", "hidden_size": hidden_size}).encode(),
        "generation_config.json": b'{"do_sample": false}',
        "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
        "tokenizer_config.json": b'{"model_max_length": 64}',
        "model.safetensors": safetensors_bytes({"w": np.arange(hidden_size, dtype=np.float32)}),
        "README.md": b"# tiny\n",
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    }
    files.update(extra)
    return files


@pytest.fixture
def hub(monkeypatch):
    # The code under test must work from its arguments alone, whatever the developer's shell holds.
    for variable in ("HF_TOKEN", TOKEN_ENV, "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    with FakeHub() as server:
        yield server


def download(hub: FakeHub, repo_id: str, revision: str, dest, **options) -> dict:
    return download_model(repo_id, revision, dest, endpoint=hub.endpoint, token_env=TOKEN_ENV, **options)


def test_download_fetches_the_model_files_and_records_them(hub, tmp_path):
    files = model_files(**{"training_args.bin": b"pickle", "original/consolidated.00.pth": b"pickle"})
    commit = hub.add_commit("org/tiny", files)
    dest = tmp_path / "models" / "tiny"

    manifest = download(hub, "org/tiny", "main", dest)

    wanted = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"}
    assert {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} == wanted | {MANIFEST_NAME}
    assert json.loads((dest / MANIFEST_NAME).read_text()) == manifest
    assert manifest["source"] == {
        "type": "hub",
        "repo_id": "org/tiny",
        "repo_type": "model",
        "revision": "main",
        "commit": commit,
        "endpoint": hub.endpoint,
    }
    assert {entry["path"]: (entry["size"], entry["sha256"]) for entry in manifest["files"]} == {
        name: (len(files[name]), hashlib.sha256(files[name]).hexdigest()) for name in wanted
    }
    assert manifest["huggingface_hub"]
    assert manifest["created"]
    assert [p.name for p in dest.parent.iterdir()] == ["tiny"]


def test_sharded_weights_follow_the_index(hub, tmp_path):
    shards = {
        f"model-0000{i}-of-00002.safetensors": safetensors_bytes({f"w{i}": np.ones(2, np.float32)}) for i in (1, 2)
    }
    index = {
        "metadata": {},
        "weight_map": {"w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"},
    }
    files = model_files(**shards, **{"model.safetensors.index.json": json.dumps(index).encode()})
    # A second copy of the weights in another layout, as Mistral repos ship: not part of the HF model.
    files["consolidated.safetensors"] = files.pop("model.safetensors")
    hub.add_commit("org/sharded", files)

    manifest = download(hub, "org/sharded", "main", tmp_path / "sharded")

    paths = {entry["path"] for entry in manifest["files"]}
    assert set(shards) | {"model.safetensors.index.json"} <= paths
    assert "consolidated.safetensors" not in paths
    assert not (tmp_path / "sharded" / "consolidated.safetensors").exists()


def test_revision_is_pinned_to_one_commit(hub, tmp_path):
    old = hub.add_commit("org/tiny", model_files(hidden_size=4), refs=("v1",))
    new = hub.add_commit("org/tiny", model_files(hidden_size=8), refs=("main",))

    by_tag = download(hub, "org/tiny", "v1", tmp_path / "v1")
    by_sha = download(hub, "org/tiny", new, tmp_path / "new")

    assert by_tag["source"]["commit"] == old
    assert json.loads((tmp_path / "v1" / "config.json").read_text())["hidden_size"] == 4
    assert by_sha["source"]["commit"] == new
    assert json.loads((tmp_path / "new" / "config.json").read_text())["hidden_size"] == 8
    # Every file of the tag's download came from the commit the tag resolved to.
    file_requests = [r.path for r in hub.requests if "/resolve/" in r.path]
    assert file_requests
    assert all(f"/resolve/{old}/" in path or f"/resolve/{new}/" in path for path in file_requests)


def test_pickle_only_repository_is_refused(hub, tmp_path):
    files = model_files(**{"pytorch_model.bin": b"\x80\x04 pretend pickle"})
    del files["model.safetensors"]
    hub.add_commit("org/pickled", files)

    with pytest.raises(ModelSourceError, match=r"org/pickled.*pickle.*pytorch_model\.bin.*allow_pickle"):
        download(hub, "org/pickled", "main", tmp_path / "pickled")

    assert not (tmp_path / "pickled").exists()
    assert not [r for r in hub.requests if "/resolve/" in r.path]  # refused before fetching anything
    manifest = download(hub, "org/pickled", "main", tmp_path / "pickled", allow_pickle=True)
    assert "pytorch_model.bin" in {entry["path"] for entry in manifest["files"]}


def test_missing_config_is_named(hub, tmp_path):
    files = model_files()
    del files["config.json"]
    hub.add_commit("org/noconfig", files)

    with pytest.raises(ModelSourceError, match=r"org/noconfig.*no config\.json"):
        download(hub, "org/noconfig", "main", tmp_path / "noconfig")
    assert not (tmp_path / "noconfig").exists()


def test_unknown_repository_is_named(hub, tmp_path):
    with pytest.raises(HubError, match=r"'org/missing'.*repository not found.*SHADOWFT_TEST_HUB_TOKEN is not set"):
        download(hub, "org/missing", "main", tmp_path / "missing")
    assert not (tmp_path / "missing").exists()


def test_unknown_revision_is_named(hub, tmp_path):
    hub.add_commit("org/tiny", model_files())

    with pytest.raises(HubError, match=r"'org/tiny' at revision 'v9'.*revision not found"):
        download(hub, "org/tiny", "v9", tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists()


def test_token_is_sent_but_never_leaked(hub, tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv(TOKEN_ENV, FAKE_TOKEN)
    caplog.set_level(logging.DEBUG)
    hub.add_commit("org/private", model_files())

    download(hub, "org/private", "main", tmp_path / "ok")
    failures = []
    for repo_id, truncate, forbid in [
        ("org/private", {"model.safetensors"}, set()),  # connection drops mid-file
        ("org/private", set(), {"config.json"}),  # the server echoes the credentials in its error
        ("org/absent", set(), set()),  # repository not found
    ]:
        hub.truncate, hub.forbid = truncate, forbid
        with pytest.raises(HubError) as failure:
            download(hub, repo_id, "main", tmp_path / repo_id.replace("/", "_"))
        failures.append(failure.value)

    assert {r.authorization for r in hub.requests if r.path.startswith(("/api/", "/org/"))} == {f"Bearer {FAKE_TOKEN}"}
    written = b"".join(path.read_bytes() for path in tmp_path.rglob("*") if path.is_file())
    output = capfd.readouterr()
    raised = "".join("".join(traceback.format_exception(error)) + repr(error) for error in failures)
    for text in (written.decode(errors="replace"), caplog.text, output.out, output.err, raised):
        assert FAKE_TOKEN not in text
    assert "Bearer *** may not read config.json" in str(failures[1])
    assert "the token in $SHADOWFT_TEST_HUB_TOKEN cannot read it" in str(failures[2])


def test_interrupted_download_leaves_no_destination(hub, tmp_path):
    hub.add_commit("org/tiny", model_files())
    hub.truncate = {"model.safetensors"}

    with pytest.raises(HubError, match=r"'org/tiny'.*download failed"):
        download(hub, "org/tiny", "main", tmp_path / "tiny")

    assert list(tmp_path.iterdir()) == []


def test_failed_update_keeps_the_previous_download(hub, tmp_path):
    old = hub.add_commit("org/tiny", model_files(hidden_size=4))
    download(hub, "org/tiny", "main", tmp_path / "tiny")
    hub.add_commit("org/tiny", model_files(hidden_size=8))
    hub.truncate = {"model.safetensors"}

    with pytest.raises(HubError):
        download(hub, "org/tiny", "main", tmp_path / "tiny")

    assert json.loads((tmp_path / "tiny" / MANIFEST_NAME).read_text())["source"]["commit"] == old
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]


def test_file_differing_from_the_listing_is_rejected(hub, tmp_path):
    files = model_files()
    hub.add_commit("org/tiny", files)
    hub.tamper = {"model.safetensors": bytes(len(files["model.safetensors"]))}

    with pytest.raises(HubError, match=r"model\.safetensors is corrupt"):
        download(hub, "org/tiny", "main", tmp_path / "tiny")
    assert not (tmp_path / "tiny").exists()
