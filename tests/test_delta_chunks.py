"""Full deltas streamed in many blocks: every block path against a plain torch oracle, bit for bit.

`chunk_elements=CHUNK` makes the small tensors of chunk_fixtures span several blocks (see
there); one test instead uses tensors of several default-size chunks. A full update is
elementwise, so torch doing the same operations must agree to the last bit.
"""

import pytest
import torch
from chunk_fixtures import (
    CHUNK,
    INT_TENSOR,
    LLAMA_SHAPES,
    PROJECTIONS,
    VOCAB,
    assert_bit_identical,
    load_model,
    moved,
    random_tensors,
    with_int_tensor,
    write_model,
)
from delta_fixtures import _private_hash_cache  # noqa: F401  (autouse)

from shadowft.engine.extraction import Delta, extract_delta
from shadowft.engine.grafting import graft
from shadowft.engine.layout import CheckpointError, DeltaError
from shadowft.engine.numerics import CHUNK_ELEMENTS, blocks, compute_dtype
from shadowft.engine.policy import Selection

VOCAB_ROWS = ("model.embed_tokens.weight", "lm_head.weight")


def graft_oracle(
    instruct: dict, base: dict, tuned: dict, alpha: float = 1.0, *, compute=torch.float32, out=None, names=None
) -> dict:
    """W_I + alpha * (W_T - W_B) in `compute`, rounded once to `out` (default: instruct's dtype).

    Tensors outside `names`, not floating point, or absent from the delta keep instruct's values;
    vocabulary rows beyond the delta's are instruct's.
    """
    result = {}
    for name, weight in instruct.items():
        if not weight.is_floating_point():
            result[name] = weight.clone()
            continue
        target = out or weight.dtype
        value = weight.to(compute)
        if (names is None or name in names) and name in base:
            rows = min(weight.shape[0], base[name].shape[0])
            value = value.clone()
            value[:rows] = value[:rows] + alpha * (tuned[name][:rows].to(compute) - base[name][:rows].to(compute))
        result[name] = value.to(target)
    return result


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    """(base, tuned, instruct) bf16 tensors and their model folders; instruct and base share the int tensor."""
    root = tmp_path_factory.mktemp("chunked")
    base = with_int_tensor(random_tensors(LLAMA_SHAPES, seed=1))
    tuned, instruct = moved(base, seed=2, scale=0.02), moved(base, seed=3, scale=0.05)
    folders = {
        role: write_model(root / role, tensors)
        for role, tensors in (("base", base), ("tuned", tuned), ("instruct", instruct))
    }
    return {"base": base, "tuned": tuned, "instruct": instruct, **{f"{k}_dir": v for k, v in folders.items()}}


def test_the_test_tensors_span_several_blocks_of_every_kind():
    """The premise of this file: at CHUNK, whole-row blocks, split rows and a short last block all occur."""
    kinds = set()
    for shape in LLAMA_SHAPES.values():
        cols = shape[1] if len(shape) > 1 else 1
        found = list(blocks(0, shape[0], cols, CHUNK))
        if len(found) > 1:
            kinds.add("split rows" if found[0].col1 - found[0].col0 < cols else "several rows")
            kinds.add("short last block" if found[-1].count < found[0].count else "even")
    assert {"several rows", "split rows", "short last block"} <= kinds


@pytest.mark.parametrize("alpha, threads", [(1.0, 1), (0.37, 2)])
def test_graft_in_many_blocks_equals_torch_bit_for_bit(family, tmp_path, alpha, threads):
    with Delta.from_models(family["base_dir"], family["tuned_dir"]) as delta:
        manifest = graft(
            family["instruct_dir"],
            delta,
            tmp_path / "out",
            alpha=alpha,
            threads=threads,
            chunk_elements=CHUNK,
            progress=False,
        )
    expected = graft_oracle(family["instruct"], family["base"], family["tuned"], alpha)
    assert_bit_identical(load_model(tmp_path / "out"), expected)
    assert manifest["tensors"][INT_TENSOR[0]] == "kept: no update in the delta"
    assert manifest["counts"]["grafted"] == len(LLAMA_SHAPES)


def test_extract_then_graft_in_many_blocks(family, tmp_path):
    base, tuned = family["base"], family["tuned"]
    extract_delta(
        family["base_dir"], tmp_path / "delta", tuned=family["tuned_dir"], chunk_elements=CHUNK, progress=False
    )
    extract_delta(
        family["base_dir"],
        tmp_path / "delta16",
        tuned=family["tuned_dir"],
        dtype="bfloat16",
        chunk_elements=CHUNK,
        progress=False,
    )
    stored, stored16 = load_model(tmp_path / "delta"), load_model(tmp_path / "delta16")
    assert_bit_identical(stored, {name: tuned[name].float() - base[name].float() for name in LLAMA_SHAPES})
    assert_bit_identical(
        stored16, {name: (tuned[name].float() - base[name].float()).bfloat16() for name in LLAMA_SHAPES}
    )
    graft(
        family["instruct_dir"], tmp_path / "delta", tmp_path / "out", alpha=0.37, chunk_elements=CHUNK, progress=False
    )
    assert_bit_identical(load_model(tmp_path / "out"), graft_oracle(family["instruct"], base, tuned, 0.37))


def test_official_preset_grafts_the_projection_biases_too(family, tmp_path):
    """The official apply_diff.py updates every *_proj tensor: weights and biases (up_proj.bias here)."""
    with Delta.from_models(family["base_dir"], family["tuned_dir"], selection=Selection("official")) as delta:
        manifest = graft(
            family["instruct_dir"], delta, tmp_path / "out", preset="official", chunk_elements=CHUNK, progress=False
        )
    assert "model.layers.0.mlp.up_proj.bias" in PROJECTIONS
    expected = graft_oracle(family["instruct"], family["base"], family["tuned"], names=set(PROJECTIONS))
    assert_bit_identical(load_model(tmp_path / "out"), expected)
    assert manifest["counts"]["grafted"] == len(PROJECTIONS)


@pytest.mark.parametrize("out_dtype", [None, "float32"])
def test_shared_vocabulary_rows_in_many_blocks(family, tmp_path, out_dtype):
    """Instruct has 6 more vocabulary rows: the first VOCAB are grafted, the rest copied (bytes, or
    converted block by block when the output dtype differs)."""
    generator = torch.Generator().manual_seed(4)
    wide = dict(family["instruct"])
    for name in VOCAB_ROWS:
        wide[name] = torch.cat([wide[name], torch.randn(6, wide[name].shape[1], generator=generator).bfloat16()])
    instruct = write_model(tmp_path / "wide", wide)
    with Delta.from_models(family["base_dir"], family["tuned_dir"]) as delta:
        manifest = graft(
            instruct,
            delta,
            tmp_path / "out",
            alpha=0.5,
            vocab_mismatch="shared",
            dtype=out_dtype,
            chunk_elements=CHUNK,
            progress=False,
        )
    out = getattr(torch, out_dtype) if out_dtype else None
    expected = graft_oracle(wide, family["base"], family["tuned"], 0.5, out=out)
    assert_bit_identical(load_model(tmp_path / "out"), expected)
    for name in VOCAB_ROWS:
        assert (
            manifest["tensors"][name] == f"partially grafted: rows [0, {VOCAB}) of {VOCAB + 6} "
            "(vocab_mismatch='shared')"
        )


def test_mixed_input_dtypes_in_many_blocks(family, tmp_path):
    """float16 base, float32 tuned, bfloat16 instruct: float32 arithmetic, one rounding to each output dtype."""
    base = {n: t.half() if t.is_floating_point() else t for n, t in family["base"].items()}
    tuned = {n: t.float() if t.is_floating_point() else t for n, t in family["tuned"].items()}
    base_dir, tuned_dir = write_model(tmp_path / "base", base), write_model(tmp_path / "tuned", tuned)
    assert compute_dtype("F16", "F32", "BF16") == "float32"
    with Delta.from_models(base_dir, tuned_dir) as delta:
        graft(family["instruct_dir"], delta, tmp_path / "bf16", alpha=0.37, chunk_elements=CHUNK, progress=False)
        graft(
            family["instruct_dir"],
            delta,
            tmp_path / "fp16",
            alpha=0.37,
            dtype="float16",
            chunk_elements=CHUNK,
            progress=False,
        )
    assert_bit_identical(load_model(tmp_path / "bf16"), graft_oracle(family["instruct"], base, tuned, 0.37))
    assert_bit_identical(
        load_model(tmp_path / "fp16"), graft_oracle(family["instruct"], base, tuned, 0.37, out=torch.float16)
    )


@pytest.fixture(scope="module")
def float64_family(tmp_path_factory):
    """float64 base and tuned (53-bit values, so float32 arithmetic would round them), float32 instruct."""
    root = tmp_path_factory.mktemp("float64")
    base = with_int_tensor(random_tensors(LLAMA_SHAPES, seed=5, dtype=torch.float64))
    tuned = moved(base, seed=6, scale=0.02)
    instruct = moved(base, seed=7, scale=0.05, dtypes=dict.fromkeys(LLAMA_SHAPES, torch.float32))
    return {
        "base": base,
        "tuned": tuned,
        "instruct": instruct,
        "base_dir": write_model(root / "base", base),
        "tuned_dir": write_model(root / "tuned", tuned),
        "instruct_dir": write_model(root / "instruct", instruct),
    }


def test_float64_inputs_are_computed_in_float64(float64_family, tmp_path):
    f = float64_family
    assert compute_dtype("F32", "F64") == "float64"
    with Delta.from_models(f["base_dir"], f["tuned_dir"]) as delta:
        graft(f["instruct_dir"], delta, tmp_path / "fp32", alpha=0.37, chunk_elements=CHUNK, progress=False)
        graft(
            f["instruct_dir"],
            delta,
            tmp_path / "fp64",
            alpha=0.37,
            dtype="float64",
            chunk_elements=CHUNK,
            progress=False,
        )
    in_float64 = graft_oracle(f["instruct"], f["base"], f["tuned"], 0.37, compute=torch.float64)
    assert_bit_identical(load_model(tmp_path / "fp32"), in_float64)
    assert_bit_identical(
        load_model(tmp_path / "fp64"),
        graft_oracle(f["instruct"], f["base"], f["tuned"], 0.37, compute=torch.float64, out=torch.float64),
    )
    # the check has teeth: float32 arithmetic rounds differently somewhere
    in_float32 = graft_oracle(f["instruct"], f["base"], f["tuned"], 0.37, compute=torch.float32)
    assert any(not torch.equal(in_float32[n], in_float64[n]) for n in LLAMA_SHAPES)


def test_float64_to_bfloat16_is_refused_rather_than_rounded_twice(float64_family, family, tmp_path):
    f = float64_family
    with Delta.from_models(f["base_dir"], f["tuned_dir"]) as delta:
        with pytest.raises(
            DeltaError,
            match=r"'[\w.]+': float64 arithmetic rounded to bfloat16 would round "
            r"twice; choose dtype float32 or float64",
        ):
            graft(family["instruct_dir"], delta, tmp_path / "out", chunk_elements=CHUNK, progress=False)
        with pytest.raises(DeltaError, match="would round twice"):  # float64 instruct, bf16 output, nothing selected
            graft(f["tuned_dir"], delta, tmp_path / "out", dtype="bfloat16", include=["^none$"], progress=False)
        with pytest.raises(DeltaError, match="is float64: save the delta as float32 or float64"):
            delta.save(tmp_path / "delta", dtype="bfloat16", progress=False)
        graft(family["instruct_dir"], delta, tmp_path / "fp32", dtype="float32", chunk_elements=CHUNK, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fp32"]
    expected = graft_oracle(family["instruct"], f["base"], f["tuned"], compute=torch.float64, out=torch.float32)
    assert_bit_identical(load_model(tmp_path / "fp32"), expected)


def test_default_chunk_on_tensors_of_several_chunks(tmp_path):
    """The default chunk, 2^20 elements: 1030 rows of 2048 make three blocks (512, 512, 6 rows); a row of
    1,080,000 elements is cut into two pieces."""
    shapes = {
        "model.layers.0.self_attn.q_proj.weight": (1030, 2048),
        "model.layers.0.mlp.down_proj.weight": (2, 1080000),
    }
    assert all(len(list(blocks(0, s[0], s[1]))) > 1 for s in shapes.values()) and CHUNK_ELEMENTS == 1 << 20
    base = random_tensors(shapes, seed=8)
    tuned, instruct = moved(base, seed=9, scale=0.02), moved(base, seed=10, scale=0.05)
    dirs = {
        role: write_model(tmp_path / role, t) for role, t in (("base", base), ("tuned", tuned), ("instruct", instruct))
    }
    with Delta.from_models(dirs["base"], dirs["tuned"]) as delta:
        graft(dirs["instruct"], delta, tmp_path / "out", alpha=0.37, progress=False)
    assert_bit_identical(load_model(tmp_path / "out"), graft_oracle(instruct, base, tuned, 0.37))


@pytest.mark.parametrize("value", [0, -64, 2.5, True, "64"])
def test_chunk_elements_must_be_a_positive_integer(family, tmp_path, value):
    with pytest.raises(CheckpointError, match=f"chunk_elements must be a positive integer, got {value!r}"):
        graft(family["instruct_dir"], family["base_dir"], tmp_path / "out", chunk_elements=value)
    assert not (tmp_path / "out").exists()
