"""The compiled kernels against the numpy path, bit for bit: element by element on every kind of value, and
whole grafts and extractions with and without them (a NaN block falling back to numpy included)."""

import numpy as np
import pytest
from chunk_fixtures import CHUNK, LLAMA_SHAPES, moved, random_tensors, write_model
from delta_fixtures import _private_hash_cache  # noqa: F401  (autouse)

from shadowft.engine import deltaformat, extraction, grafting, kernels
from shadowft.engine.extraction import Delta, extract_delta
from shadowft.engine.grafting import graft
from shadowft.engine.numerics import Scratch, encode

ALPHAS = [None, 0.5, -1.7, 3.0]  # None: no scaling, as the engine passes alpha 1


def bfloat16_bits(count: int, seed: int) -> np.ndarray:
    """Finite bfloat16s of many magnitudes, then every special kind: zeros, subnormals, the largest finite
    values (whose sums overflow), infinities, NaNs, and values whose sums fall on rounding ties."""
    rng = np.random.default_rng(seed)
    values = (rng.standard_normal(count) * 2.0 ** rng.integers(-30, 30, count)).astype(np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)
    special = [0x0000, 0x8000, 0x0001, 0x807F, 0x0040, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80, 0x7FC1, 0xFF81, 0x3F81, 0x3B80]
    bits[: len(special) * 8 : 8] = special
    assert bits.shape == (count,)
    return bits


def decoded(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def compare(kernel_out: np.ndarray, nans: int, reference: np.ndarray, out_code: str) -> None:
    """The kernel counted the NaNs that the numpy path makes, and agrees with it on every other element."""
    finite_or_inf = ~np.isnan(reference)
    expected = np.frombuffer(encode(reference.copy(), out_code, Scratch(len(reference))), kernel_out.dtype)
    assert nans == np.count_nonzero(~finite_or_inf) > 0
    assert np.array_equal(kernel_out[finite_or_inf], expected[finite_or_inf])


@pytest.mark.parametrize("alpha", ALPHAS)
def test_graft_difference_is_the_numpy_path(alpha):
    instruct, tuned, base = (bfloat16_bits(20000, seed) for seed in (1, 2, 3))
    with np.errstate(invalid="ignore", over="ignore"):  # infinities and overflows, on purpose
        update = decoded(tuned) - decoded(base)
        if alpha is not None:
            update *= np.float32(alpha)
        reference = decoded(instruct) + update
    out = np.empty(len(instruct), np.uint16)
    nans = kernels.graft_difference(out, instruct, tuned, base, np.float32(1.0 if alpha is None else alpha))
    compare(out, nans, reference, "BF16")


@pytest.mark.parametrize("alpha", ALPHAS)
def test_graft_dense_is_the_numpy_path(alpha):
    instruct = bfloat16_bits(20000, 4)
    with np.errstate(invalid="ignore", over="ignore"):
        update = decoded(bfloat16_bits(20000, 5)) - decoded(bfloat16_bits(20000, 6))  # float32, not bf16-valued
        reference = decoded(instruct) + (update if alpha is None else update * np.float32(alpha))
    out = np.empty(len(instruct), np.uint16)
    nans = kernels.graft_dense(out, instruct, update, np.float32(1.0 if alpha is None else alpha))
    compare(out, nans, reference, "BF16")


def test_difference_is_the_numpy_path():
    tuned, base = bfloat16_bits(20000, 7), bfloat16_bits(20000, 8)
    out = np.empty(len(tuned), np.float32)
    nans = kernels.difference(out, tuned, base)
    with np.errstate(invalid="ignore", over="ignore"):
        reference = decoded(tuned) - decoded(base)
    compare(out, nans, reference, "F32")


def test_kernels_read_unaligned_read_only_inputs():
    """Inputs come straight from memory-mapped files: read-only, and at an odd byte offset after an odd-sized
    tensor."""
    values = bfloat16_bits(1000, 9)
    values[~np.isfinite(decoded(values)) | (values == 0x8000)] = 0  # x + (x - x) is x but for -0
    unaligned = np.frombuffer(b"\0" + values.tobytes(), np.uint16, offset=1)
    assert unaligned.ctypes.data % 2 == 1 and not unaligned.flags.writeable
    out = np.empty(1000, np.uint16)
    assert kernels.graft_difference(out, unaligned, unaligned, unaligned, np.float32(1)) == 0
    assert np.array_equal(out, values)


@pytest.fixture(scope="module")
def triple_with_nan(tmp_path_factory):
    """A bfloat16 triple whose tuned model has a NaN in one block of one tensor."""
    root = tmp_path_factory.mktemp("nan-triple")
    base = random_tensors(LLAMA_SHAPES, seed=11)
    tuned, instruct = moved(base, seed=12, scale=0.01), moved(base, seed=13, scale=0.05)
    tuned["model.layers.0.mlp.down_proj.weight"][3, 100] = float("nan")
    return tuple(
        write_model(root / role, tensors)
        for role, tensors in (("base", base), ("tuned", tuned), ("instruct", instruct))
    )


def model_bytes(directory) -> bytes:
    (file,) = directory.glob("*.safetensors")
    return file.read_bytes()


def recording(monkeypatch, module, name: str) -> list:
    """Replace module.name by a wrapper that keeps what each call returned."""
    results, real = [], getattr(module, name)

    def recorded(*args):
        results.append(real(*args))
        return results[-1]

    monkeypatch.setattr(module, name, recorded)
    return results


@pytest.mark.parametrize("alpha", [1.0, 0.3])
def test_a_graft_by_kernel_is_the_numpy_graft(triple_with_nan, tmp_path, monkeypatch, alpha):
    base, tuned, instruct = triple_with_nan

    def graft_to(out):
        with Delta.from_models(base, tuned) as delta:
            return graft(instruct, delta, out, alpha=alpha, chunk_elements=CHUNK, progress=False)

    results = recording(monkeypatch, grafting, "graft_kernel_block")
    by_kernel = graft_to(tmp_path / "kernel")
    monkeypatch.setattr(grafting.PlannedTensor, "fused", property(lambda self: None))
    by_numpy = graft_to(tmp_path / "numpy")
    # every grafted block ran the kernel, and the one with the NaN fell back to numpy
    assert sum(result is None for result in results) == 1 and len(results) > 50
    assert model_bytes(tmp_path / "kernel") == model_bytes(tmp_path / "numpy")
    assert by_kernel["tensors"] == by_numpy["tensors"]


def test_a_stored_delta_and_its_graft_by_kernel_are_numpy_s(triple_with_nan, tmp_path, monkeypatch):
    base, tuned, instruct = triple_with_nan
    extracted = recording(monkeypatch, deltaformat, "difference_block")
    grafted = recording(monkeypatch, grafting, "graft_kernel_block")

    def run(name):
        extract_delta(base, tmp_path / name / "delta", tuned=tuned, chunk_elements=CHUNK, progress=False)
        graft(instruct, tmp_path / name / "delta", tmp_path / name / "model", chunk_elements=CHUNK, progress=False)

    run("kernel")
    assert sum(result is None for result in extracted) == 1 and len(extracted) > 50
    assert sum(result is None for result in grafted) == 1 and len(grafted) == len(extracted)
    monkeypatch.setattr(extraction, "difference_part", lambda *args: None)
    monkeypatch.setattr(grafting.PlannedTensor, "fused", property(lambda self: None))
    run("numpy")
    for part in ("delta", "model"):
        assert model_bytes(tmp_path / "kernel" / part) == model_bytes(tmp_path / "numpy" / part), part
