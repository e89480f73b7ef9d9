"""The ground floor of the delta engine: atomic outputs, safetensors I/O, rounding, hashing."""

import json

import numpy as np
import pytest
from delta_fixtures import _private_hash_cache  # noqa: F401  (autouse)

from shadowft.engine.dtypes import dtype_code
from shadowft.engine.layout import CheckpointError
from shadowft.engine.numerics import Block, Scratch, blocks, encode, read_float
from shadowft.engine.parallel import run_tasks
from shadowft.engine.provenance import file_sha256
from shadowft.engine.reader import WINDOW_BYTES, Checkpoint, ties_embeddings
from shadowft.engine.writer import SafetensorsWriter, output_tensor, parse_size
from shadowft.io import atomic_directory, atomic_write_json, sha256_file

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402

# ------------------------------------------------------------------ io.py


def test_atomic_directory_replaces_existing_output(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_directory(final) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.tmp-")
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_directory_failure_keeps_old_output_and_leaves_no_temp(tmp_path):
    final = tmp_path / "out"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_directory(final) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert (final / "old.txt").read_text() == "old"


def test_atomic_write_json_and_sha256(tmp_path):
    path = tmp_path / "sub" / "a.json"
    atomic_write_json(path, {"b": 1})
    assert json.loads(path.read_text()) == {"b": 1}
    assert [p.name for p in path.parent.iterdir()] == ["a.json"]
    import hashlib

    assert sha256_file(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_file_sha256_is_cached_until_the_file_changes(tmp_path, monkeypatch):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"a" * 1000)
    calls = []
    import shadowft.engine.provenance as provenance

    monkeypatch.setattr(provenance, "sha256_file", lambda p: calls.append(p) or sha256_file(p))
    first = file_sha256(path)
    assert file_sha256(path) == first and len(calls) == 1
    path.write_bytes(b"b" * 1000)  # same size: the ctime/mtime change must invalidate the entry
    assert file_sha256(path) == sha256_file(path) != first and len(calls) == 2
    monkeypatch.setenv("SHADOWFT_CACHE_DIR", "")
    file_sha256(path)
    assert len(calls) == 3


# ---------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    "text, expected",
    [("5GB", 5 * 10**9), ("500MB", 5 * 10**8), ("2GiB", 2 * 2**30), ("1.5kb", 1500), (123, 123), ("64", 64)],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["big", "-1GB", 0, "5 parsecs"])
def test_parse_size_rejects_nonsense(text):
    with pytest.raises(CheckpointError):
        parse_size(text)


def test_dtype_names():
    assert [dtype_code(n) for n in ("bfloat16", "bf16", "torch.float16", "half", "fp32", "F64")] == [
        "BF16",
        "BF16",
        "F16",
        "F16",
        "F32",
        "F64",
    ]
    with pytest.raises(CheckpointError, match="int8"):
        dtype_code("int8")


def test_blocks_cover_rows_exactly_within_chunk():
    for rows, cols, chunk in [(10, 3, 7), (5, 20, 7), (1, 1, 4), (0, 5, 8), (3, 8, 8)]:
        covered = []
        for block in blocks(0, rows, cols, chunk):
            assert 0 < block.count <= max(chunk, 1)
            covered.extend(range(block.start, block.start + block.count))
        assert covered == list(range(rows * cols))
    assert list(blocks(2, 4, 3, 100)) == [Block(2, 4, 0, 3, 3)]


# ---------------------------------------------------------------- writing


def test_writer_shards_and_safetensors_reads_it_back(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {f"t{i}": rng.standard_normal((5, 7)).astype(np.float32) for i in range(5)}
    planned = [output_tensor(name, "F32", value.shape) for name, value in tensors.items()]
    with SafetensorsWriter(tmp_path, planned, max_shard_bytes=300) as writer:
        for name, value in reversed(tensors.items()):  # any order: offsets are planned
            writer.write(name, 0, memoryview(value.view(np.uint8).reshape(-1)))
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 5 * 35 * 4
    assert sorted(set(index["weight_map"].values())) == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    loaded = {}
    for file in tmp_path.glob("*.safetensors"):
        loaded.update(load_file(file))
    assert all(np.array_equal(loaded[n].numpy(), v) for n, v in tensors.items())
    with Checkpoint(tmp_path) as checkpoint:
        assert list(checkpoint.tensors) == list(tensors)  # shard order, then offset order


def test_single_shard_has_no_index(tmp_path):
    with SafetensorsWriter(tmp_path, [output_tensor("x", "BF16", (2,))]) as writer:
        writer.write("x", 0, memoryview(b"\x80\x3f\x00\x40"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]
    assert load_file(tmp_path / "model.safetensors")["x"].float().tolist() == [1.0, 2.0]


# ------------------------------------------------------------- arithmetic


def test_bfloat16_rounding_matches_torch_including_ties_and_extremes():
    rng = np.random.default_rng(1)
    values = np.concatenate(
        [
            (rng.standard_normal(20000) * 10.0 ** rng.integers(-30, 30, 20000)).astype(np.float32),
            np.array(
                [0x3F808000, 0x3F818000, 0xBF808000, 0x7F7FFFFF, 0x7F7F8000, 0x00008000, 0x80000000, 0x00000001],
                np.uint32,
            ).view(np.float32),
            np.array([np.inf, -np.inf, 0.0, 3.4e38, -3.4e38], np.float32),
        ]
    )
    # exact ties between two bf16 neighbours (low half 0x8000), with odd and even kept bits, both signs
    ties = (np.arange(0, 1 << 16, 7, dtype=np.uint32) << 16 | 0x8000).view(np.float32)
    values = np.concatenate([values, ties[np.isfinite(ties)]]).astype(np.float32)
    scratch = Scratch(len(values))
    ours = np.frombuffer(encode(values.copy(), "BF16", scratch), np.uint16)
    expected = torch.from_numpy(values).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, expected)


def test_nan_stays_nan_when_rounded():
    values = np.array([0x7F800001, 0xFFFFFFFF, 0x7FC00000], np.uint32).view(np.float32)
    out = np.frombuffer(encode(values.copy(), "BF16", Scratch(8)), np.uint16)
    as_float = (out.astype(np.uint32) << 16).view(np.float32)
    assert np.isnan(as_float).all()


def test_read_float_converts_every_float_dtype_exactly(tmp_path):
    source = torch.randn(6, 5) * 3
    tensors = {"bf16": source.bfloat16(), "f16": source.half(), "f32": source, "f64": source.double()}
    save_file(tensors, tmp_path / "model.safetensors")
    scratch = Scratch(64)
    with Checkpoint(tmp_path) as checkpoint:
        for name, tensor in tensors.items():
            dtype = np.float64 if name == "f64" else np.float32
            got = read_float(checkpoint[name], 5, scratch.work(0, 20, np.dtype(dtype)), scratch)
            assert np.array_equal(got, tensor.reshape(-1)[5:25].to(torch.float64).numpy().astype(dtype))


def test_run_tasks_reports_results_and_raises_the_first_failure():
    seen = []
    run_tasks((lambda scratch, i=i: i for i in range(50)), threads=3, on_result=seen.append)
    assert sorted(seen) == list(range(50))

    def failing(scratch):
        raise ValueError("task failed")

    with pytest.raises(ValueError, match="task failed"):
        run_tasks(iter([failing] * 10), threads=2)


# ----------------------------------------------------------------- reading


@pytest.mark.bad_input("checkpoint", caught="job")
def test_checkpoint_rejects_truncated_and_garbage_files(tmp_path):
    save_file({"w": torch.zeros(100)}, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[:-10])
    with pytest.raises(CheckpointError, match="'w'.*truncated"):
        Checkpoint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        Checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        Checkpoint(tmp_path / "missing")


@pytest.mark.bad_input("checkpoint", caught="job")
def test_checkpoint_checks_the_index_against_the_shards(tmp_path):
    save_file({"a": torch.zeros(2)}, tmp_path / "model-00001-of-00002.safetensors")
    save_file({"b": torch.zeros(2)}, tmp_path / "model-00002-of-00002.safetensors")
    index = {
        "metadata": {},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors"},
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="'b'"):
        Checkpoint(tmp_path)
    index["weight_map"]["b"] = "model-00003-of-00002.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="does not exist"):
        Checkpoint(tmp_path)


@pytest.mark.bad_input("checkpoint", caught="job")
def test_pickle_needs_an_explicit_opt_in(tmp_path):
    state = {"w": torch.randn(3, 4).bfloat16(), "n": torch.arange(3)}
    torch.save(state, tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="allow_pickle"):
        Checkpoint(tmp_path)
    with Checkpoint(tmp_path, allow_pickle=True) as checkpoint:
        scratch = Scratch(16)
        got = read_float(checkpoint["w"], 0, scratch.work(0, 12), scratch)
        assert np.array_equal(got, state["w"].float().reshape(-1).numpy())
        assert checkpoint["n"].dtype == "I64"


def test_tied_embeddings_from_config_or_tensors(tmp_path):
    save_file({"model.embed_tokens.weight": torch.zeros(4, 2)}, tmp_path / "model.safetensors")
    with Checkpoint(tmp_path) as checkpoint:
        assert ties_embeddings(checkpoint)  # no config: no lm_head means tied
    (tmp_path / "config.json").write_text(json.dumps({"text_config": {"tie_word_embeddings": False}}))
    with Checkpoint(tmp_path) as checkpoint:
        assert not ties_embeddings(checkpoint)


def test_resident_memory_stays_flat_while_reading(tmp_path):
    """Windows are unmapped as reading moves on: reading 64 MiB adds at most about one window of RSS."""
    psutil = pytest.importorskip("psutil")
    save_file({"big": torch.zeros(16 << 20)}, tmp_path / "model.safetensors")
    process = psutil.Process()
    with Checkpoint(tmp_path) as checkpoint:
        scratch = Scratch()
        info = checkpoint["big"]
        before = process.memory_info().rss
        for block in blocks(0, info.rows, info.cols):
            read_float(info, block.start, scratch.work(0, block.count), scratch)
        assert process.memory_info().rss - before < 2 * WINDOW_BYTES < 64 << 20
