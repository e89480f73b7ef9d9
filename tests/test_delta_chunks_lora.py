"""LoRA deltas streamed in many blocks, in both of PEFT's layouts, against the exact update.

The engine computes W + alpha * s * B @ A in float32 and rounds once. Its rank-r dot
products are summed in BLAS's order, so instead of one expected value each output element
must be the rounding of some value within the float32 error bound of the exact (float64)
result: `admissible_range` in chunk_fixtures. That range is a single bfloat16 value for all
but a few elements, so an engine that truncates, or reads the wrong rows of a factor for one
block, fails; the tests also check that truncation would.
"""

import pytest
import torch
from chunk_fixtures import (
    CHUNK,
    HIDDEN,
    LLAMA_SHAPES,
    VOCAB,
    WIDE,
    admissible_range,
    assert_bit_identical,
    assert_correctly_rounded,
    exact_lora_graft,
    load_model,
    moved,
    random_tensors,
    truncated_to_bfloat16,
    ulps,
    with_int_tensor,
    write_adapter,
    write_model,
)
from delta_fixtures import _private_hash_cache  # noqa: F401  (autouse)

from shadowft.engine.extraction import Delta, extract_delta
from shadowft.engine.grafting import graft
from shadowft.engine.layout import DeltaError

RANK, LORA_ALPHA = 4, 8  # s = lora_alpha / r = 2
SCALE = LORA_ALPHA / RANK

#: Standard layout: weight [out, in] = [rows, cols], A [r, cols], B [rows, r]; embeddings are transposed.
STANDARD_TARGETS = (
    "model.embed_tokens",
    "model.layers.0.self_attn.q_proj",
    "model.layers.0.mlp.up_proj",
    "model.layers.0.mlp.down_proj",
    "model.layers.1.mlp.down_proj",
)
#: GPT-2's Conv1D layers store weight [in, out]: PEFT's fan_in_fan_out, A [r, rows], B [cols, r].
CONV1D_SHAPES = {
    "transformer.wte.weight": (VOCAB, HIDDEN),
    "transformer.h.0.attn.c_attn.weight": (HIDDEN, 3 * HIDDEN),  # rows of 72 > CHUNK: split rows
    "transformer.h.0.attn.c_proj.weight": (HIDDEN, HIDDEN),
    "transformer.h.0.mlp.c_fc.weight": (HIDDEN, WIDE),
    "transformer.h.0.mlp.c_proj.weight": (WIDE, HIDDEN),  # several rows a block
    "transformer.h.0.ln_1.weight": (HIDDEN,),
}
CONV1D_TARGETS = ("transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "transformer.h.0.mlp.c_proj")


def random_factors(shapes: dict, modules, *, transposed, seed: int, dtype=torch.float32) -> dict:
    """{module: (A, B)} with random nonzero entries (as after training), shaped for each module's layout."""
    generator = torch.Generator().manual_seed(seed)
    factors = {}
    for module in modules:
        rows, cols = shapes[f"{module}.weight"]
        a_cols, b_rows = (rows, cols) if transposed(module) else (cols, rows)
        a = torch.randn(RANK, a_cols, generator=generator, dtype=torch.float64) * 0.3
        b = torch.randn(b_rows, RANK, generator=generator, dtype=torch.float64) * 0.3
        factors[module] = (a.to(dtype), b.to(dtype))
    return factors


def check_lora_graft(out: dict, instruct: dict, factors: dict, *, alpha: float, transposed, compute=torch.float32):
    """Targets correctly rounded from the exact update, everything else instruct's bits; returns the
    share of elements the bound pins to a single value, and the share truncation would get wrong."""
    pinned, truncation_wrong, count = 0.0, 0.0, 0
    for module, (a, b) in factors.items():
        name = f"{module}.weight"
        exact, magnitude = exact_lora_graft(instruct[name], a, b, SCALE, alpha, transposed(module))
        low, high = admissible_range(exact, magnitude, rank=RANK, compute=compute, out=instruct[name].dtype)
        pinned += assert_correctly_rounded(out[name], low, high, name) * exact.numel()
        if instruct[name].dtype == torch.bfloat16:
            cut = truncated_to_bfloat16(exact)
            truncation_wrong += float(((cut.double() < low.double()) | (cut.double() > high.double())).sum())
        count += exact.numel()
    others = {n: t for n, t in instruct.items() if n.removesuffix(".weight") not in factors}
    assert_bit_identical({n: out[n] for n in others}, others)
    return pinned / count, truncation_wrong / count


@pytest.fixture(scope="module")
def standard(tmp_path_factory):
    """Llama-like base and instruct (instruct with 6 more vocabulary rows) and a LoRA adapter, embedding included."""
    root = tmp_path_factory.mktemp("lora_standard")
    base = with_int_tensor(random_tensors(LLAMA_SHAPES, seed=11))
    instruct = moved(base, seed=12, scale=0.05)
    generator = torch.Generator().manual_seed(13)
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        instruct[name] = torch.cat([instruct[name], torch.randn(6, HIDDEN, generator=generator).bfloat16()])
    factors = random_factors(LLAMA_SHAPES, STANDARD_TARGETS, transposed=lambda m: m.endswith("embed_tokens"), seed=14)
    adapter = write_adapter(
        root / "adapter", factors, r=RANK, lora_alpha=LORA_ALPHA, embeddings=("model.embed_tokens",)
    )
    return {
        "base": write_model(root / "base", base),
        "instruct_tensors": instruct,
        "factors": factors,
        "instruct": write_model(root / "instruct", instruct),
        "adapter": adapter,
        "transposed": lambda module: module.endswith("embed_tokens"),
    }


@pytest.fixture(scope="module")
def conv1d(tmp_path_factory):
    """GPT-2-like Conv1D weights [in, out] and an adapter saved with fan_in_fan_out=True."""
    root = tmp_path_factory.mktemp("lora_conv1d")
    base = random_tensors(CONV1D_SHAPES, seed=15)
    instruct = moved(base, seed=16, scale=0.05)
    factors = random_factors(CONV1D_SHAPES, CONV1D_TARGETS, transposed=lambda m: True, seed=17)
    adapter = write_adapter(root / "adapter", factors, r=RANK, lora_alpha=LORA_ALPHA, fan_in_fan_out=True)
    return {
        "base": write_model(root / "base", base, tied=True),
        "instruct_tensors": instruct,
        "factors": factors,
        "instruct": write_model(root / "instruct", instruct, tied=True),
        "adapter": adapter,
        "transposed": lambda module: True,
    }


@pytest.mark.parametrize("layout", ["standard", "conv1d"])
@pytest.mark.parametrize("alpha", [1.0, 0.6])
def test_lora_in_many_blocks_is_correctly_rounded(layout, alpha, request, tmp_path):
    models = request.getfixturevalue(layout)
    manifest = extract_delta(
        models["base"], tmp_path / "delta", adapter=models["adapter"], chunk_elements=CHUNK, progress=False
    )
    layouts = {spec["parts"][0]["layout"] for spec in manifest["tensors"].values()}
    assert layouts == ({"standard", "transposed"} if layout == "standard" else {"transposed"})
    graft(
        models["instruct"],
        tmp_path / "delta",
        tmp_path / "out",
        alpha=alpha,
        vocab_mismatch="shared",
        chunk_elements=CHUNK,
        progress=False,
    )
    out = load_model(tmp_path / "out")
    pinned, truncation_wrong = check_lora_graft(
        out, models["instruct_tensors"], models["factors"], alpha=alpha, transposed=models["transposed"]
    )
    assert pinned > 0.99, "the bound leaves most elements one admissible value"
    assert truncation_wrong > 0.25, "truncating instead of rounding would fail this check"
    # grafting straight from the adapter does the same arithmetic as from the saved delta
    with Delta.from_adapter(models["base"], models["adapter"]) as delta:
        graft(
            models["instruct"],
            delta,
            tmp_path / "direct",
            alpha=alpha,
            vocab_mismatch="shared",
            chunk_elements=CHUNK,
            progress=False,
        )
    assert_bit_identical(load_model(tmp_path / "direct"), out)


def test_lora_at_the_default_chunk_on_tensors_of_several_chunks(tmp_path):
    """2^20-element chunks: 1030 rows of 2048 are three blocks, rows of 1,080,000 are cut in two."""
    shapes = {
        "model.layers.0.self_attn.q_proj.weight": (1030, 2048),
        "model.layers.0.mlp.down_proj.weight": (3, 1080000),
    }
    base = random_tensors(shapes, seed=18)
    instruct = moved(base, seed=19, scale=0.05)
    factors = random_factors(shapes, [n.removesuffix(".weight") for n in shapes], transposed=lambda m: False, seed=20)
    adapter = write_adapter(tmp_path / "adapter", factors, r=RANK, lora_alpha=LORA_ALPHA)
    base_dir, instruct_dir = write_model(tmp_path / "base", base), write_model(tmp_path / "instruct", instruct)
    with Delta.from_adapter(base_dir, adapter) as delta:
        graft(instruct_dir, delta, tmp_path / "out", alpha=0.6, progress=False)
    pinned, _ = check_lora_graft(load_model(tmp_path / "out"), instruct, factors, alpha=0.6, transposed=lambda m: False)
    assert pinned > 0.99


def test_float64_factors_are_computed_in_float64(tmp_path):
    """float64 factors on a float32 instruct: float64 arithmetic, one rounding to float32. The float64
    bound is tight enough that float32 arithmetic would fail it."""
    shapes = {n: s for n, s in LLAMA_SHAPES.items() if n.endswith("proj.weight")}
    base = random_tensors(shapes, seed=21, dtype=torch.float32)
    instruct = moved(base, seed=22, scale=0.05)
    modules = [n.removesuffix(".weight") for n in shapes]
    factors = random_factors(shapes, modules, transposed=lambda m: False, seed=23, dtype=torch.float64)
    adapter = write_adapter(tmp_path / "adapter", factors, r=RANK, lora_alpha=LORA_ALPHA)
    base_dir, instruct_dir = write_model(tmp_path / "base", base), write_model(tmp_path / "instruct", instruct)
    extract_delta(base_dir, tmp_path / "delta", adapter=adapter, chunk_elements=CHUNK, progress=False)
    graft(instruct_dir, tmp_path / "delta", tmp_path / "out", alpha=0.6, chunk_elements=CHUNK, progress=False)
    out = load_model(tmp_path / "out")
    pinned, _ = check_lora_graft(out, instruct, factors, alpha=0.6, transposed=lambda m: False, compute=torch.float64)
    assert pinned > 0.99
    in_float32 = {}
    for module, (a, b) in factors.items():
        name = f"{module}.weight"
        in_float32[name] = instruct[name] + 0.6 * (SCALE * (b.float() @ a.float()))
    with pytest.raises(AssertionError, match="not a correct rounding"):
        check_lora_graft(in_float32, instruct, factors, alpha=0.6, transposed=lambda m: False, compute=torch.float64)
    bf16_dir = write_model(tmp_path / "instruct16", {n: t.bfloat16() for n, t in instruct.items()})
    with pytest.raises(DeltaError, match="float64 arithmetic rounded to bfloat16 would round twice"):
        graft(bf16_dir, tmp_path / "delta", tmp_path / "refused", progress=False)
    assert not (tmp_path / "refused").exists()


def test_peft_fan_in_fan_out_layout_on_gpt2(tmp_path):
    """PEFT itself, on GPT-2's Conv1D layers (fan_in_fan_out=True): our graft is its merge, up to the
    summation order (1 ulp), and correctly rounded from the exact update."""
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_embd=HIDDEN, n_layer=1, n_head=2, vocab_size=VOCAB, n_positions=16)
    torch.manual_seed(24)
    model = transformers.GPT2LMHeadModel(config).to(torch.bfloat16)
    model.save_pretrained(tmp_path / "base")
    lora = peft.LoraConfig(r=RANK, lora_alpha=LORA_ALPHA, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True)
    peft_model = peft.get_peft_model(model, lora)
    generator = torch.Generator().manual_seed(25)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = {n: t.detach() for n, t in peft_model.merge_and_unload().state_dict().items()}
    with Delta.from_adapter(tmp_path / "base", tmp_path / "adapter") as delta:
        graft(tmp_path / "base", delta, tmp_path / "out", chunk_elements=CHUNK, progress=False)
    ours, base = load_model(tmp_path / "out"), load_model(tmp_path / "base")
    saved = load_model(tmp_path / "adapter")
    factors = {
        m: (saved[f"base_model.model.{m}.lora_A.weight"], saved[f"base_model.model.{m}.lora_B.weight"])
        for m in ("transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc")
    }
    pinned, _ = check_lora_graft(ours, base, factors, alpha=1.0, transposed=lambda m: True)
    assert pinned > 0.99
    assert all(ulps(ours[f"{m}.weight"], merged[f"{m}.weight"]) <= 1 for m in factors)
