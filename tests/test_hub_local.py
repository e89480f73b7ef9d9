"""link_local_model: a model from a local folder, checked, linked or copied, with a manifest."""

from __future__ import annotations

import hashlib
import json

import pytest

from shadowft.data.hub import MANIFEST_NAME, fetch_model, link_local_model
from shadowft.data.selection import ModelSourceError

MODEL_FILES = {
    "config.json": b'{"model_type": "qwen2"}',
    "generation_config.json": b"{}",
    "tokenizer.json": b"{}",
    "tokenizer_config.json": b"{}",
    "model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ",
}


def make_folder(root, files):
    root.mkdir(parents=True)
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    return root


@pytest.fixture
def source(tmp_path):
    extra = {"training_args.bin": b"pickle", "checkpoint-10/model.safetensors": b"old", ".git/config": b"x"}
    return make_folder(tmp_path / "src", {**MODEL_FILES, **extra})


def test_links_the_model_files_and_records_their_hashes(source, tmp_path):
    dest = tmp_path / "models" / "tiny"

    manifest = link_local_model(source, dest)

    assert sorted(p.name for p in dest.iterdir()) == sorted([*MODEL_FILES, MANIFEST_NAME])
    for name in MODEL_FILES:
        assert (dest / name).is_symlink()
        assert (dest / name).resolve() == (source / name).resolve()
    assert manifest["source"] == {"type": "local", "path": str(source.resolve()), "link": "symlink"}
    assert {entry["path"]: (entry["size"], entry["sha256"]) for entry in manifest["files"]} == {
        name: (len(content), hashlib.sha256(content).hexdigest()) for name, content in MODEL_FILES.items()
    }
    assert json.loads((dest / MANIFEST_NAME).read_text()) == manifest
    assert [p.name for p in dest.parent.iterdir()] == ["tiny"]


def test_links_point_past_symlinks_in_the_source(source, tmp_path):
    # A Hugging Face cache snapshot is a folder of symlinks into blobs/.
    snapshot = tmp_path / "snapshot"
    snapshot.mkdir()
    for name in MODEL_FILES:
        (snapshot / name).symlink_to(source / name)

    link_local_model(snapshot, tmp_path / "dest")

    assert (tmp_path / "dest" / "model.safetensors").readlink() == (source / "model.safetensors").resolve()


def test_copy_mode_copies(source, tmp_path):
    manifest = link_local_model(source, tmp_path / "dest", copy=True)

    weights = tmp_path / "dest" / "model.safetensors"
    assert not weights.is_symlink()
    assert weights.read_bytes() == MODEL_FILES["model.safetensors"]
    assert manifest["source"]["link"] == "copy"


def test_replaces_an_existing_destination(source, tmp_path):
    dest = make_folder(tmp_path / "dest", {"stale.txt": b"old"})

    link_local_model(source, dest)

    assert not (dest / "stale.txt").exists()
    assert (dest / MANIFEST_NAME).is_file()


def test_sharded_model_takes_the_indexed_shards(tmp_path):
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    files = {name: content for name, content in MODEL_FILES.items() if name != "model.safetensors"}
    files |= {
        "model.safetensors.index.json": json.dumps(index).encode(),
        "model-00001-of-00002.safetensors": b"1",
        "model-00002-of-00002.safetensors": b"2",
        "consolidated.safetensors": b"12",
    }
    source = make_folder(tmp_path / "src", files)

    manifest = link_local_model(source, tmp_path / "dest")

    assert {entry["path"] for entry in manifest["files"]} == set(files) - {"consolidated.safetensors"}


@pytest.mark.parametrize(
    ("remove", "add", "message"),
    [
        ("config.json", {}, r"no config\.json"),
        ("model.safetensors", {}, r"no weights \(model\.safetensors or model\.safetensors\.index\.json\)"),
        ("model.safetensors", {"pytorch_model.bin": b"p"}, r"only pickle weights \(pytorch_model\.bin\).*allow_pickle"),
        (
            "model.safetensors",
            {"model.safetensors.index.json": b'{"weight_map": {"a": "model-00001-of-00002.safetensors"}}'},
            r"lists shards that do not exist: model-00001-of-00002\.safetensors",
        ),
        ("model.safetensors", {"model.safetensors.index.json": b"[1, 2]"}, r"has no valid weight_map"),
    ],
)
@pytest.mark.bad_input("model", caught="job")
def test_rejects_a_folder_that_is_not_a_loadable_model(tmp_path, remove, add, message):
    files = {name: content for name, content in MODEL_FILES.items() if name != remove} | add
    source = make_folder(tmp_path / "src", files)

    with pytest.raises(ModelSourceError, match=message) as failure:
        link_local_model(source, tmp_path / "dest")

    assert str(source) in str(failure.value)
    assert not (tmp_path / "dest").exists()


def test_allow_pickle_accepts_pickle_weights(tmp_path):
    files = {name: content for name, content in MODEL_FILES.items() if name != "model.safetensors"}
    source = make_folder(tmp_path / "src", files | {"pytorch_model.bin": b"p"})

    manifest = link_local_model(source, tmp_path / "dest", allow_pickle=True)

    assert "pytorch_model.bin" in {entry["path"] for entry in manifest["files"]}


@pytest.mark.parametrize("dest", [".", ".."])
def test_refuses_to_replace_its_own_source(source, dest):
    with pytest.raises(ModelSourceError, match="inside the destination"):
        link_local_model(source, source / dest)
    assert (source / "model.safetensors").is_file()


@pytest.mark.bad_input("model", caught="job")
def test_rejects_a_missing_folder(tmp_path):
    with pytest.raises(ModelSourceError, match=r"local model .*nowhere: not a directory"):
        link_local_model(tmp_path / "nowhere", tmp_path / "dest")


def test_fetch_model_follows_the_workflow_config(tmp_path):
    source = tmp_path / "src"
    source.mkdir()
    (source / "config.json").write_text("{}")
    (source / "model.safetensors").write_bytes(b"weights")
    (source / "modeling_custom.py").write_text("print('remote code')")
    plain = fetch_model({"source": "local", "path": str(source)}, tmp_path / "plain")
    trusted = fetch_model({"source": "local", "path": str(source), "trust_remote_code": True}, tmp_path / "trusted")
    assert "modeling_custom.py" not in {entry["path"] for entry in plain["files"]}
    assert "modeling_custom.py" in {entry["path"] for entry in trusted["files"]}
