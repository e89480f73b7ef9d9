"""Synthetic checkpoints whose tensors span many blocks, and the independent oracles they are checked with.

The engine streams a tensor in blocks of at most `chunk_elements` elements (2^20 by
default): whole rows, or pieces of a row longer than that. Real test models are far
smaller than 2^20 elements, so the tests pass CHUNK instead. With CHUNK = 64 the shapes
below take every path: a 24-wide matrix goes 2 rows a block (45 rows leave a short last
block), a 150-wide row is split into 64 + 64 + 22, a 150-vector is 3 blocks, and an 800-byte
int64 tensor is copied in two byte ranges (CHUNK * 8 bytes each).

Oracles are plain torch on whole tensors. A full update is elementwise, so torch does the
same float32 (or float64) operations and the output must match bit for bit. A LoRA update
holds a dot product of r terms whose summation order is BLAS's; there the output must be
the correct rounding of a value within the float32 error bound of the exact result
(`admissible_range`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

CHUNK = 64
HIDDEN, WIDE, VOCAB = 24, 150, 45
PEFT_PREFIX = "base_model.model."

#: A Llama-like layout: every float tensor spans several CHUNK blocks except the norms.
LLAMA_SHAPES = {
    "model.embed_tokens.weight": (VOCAB, HIDDEN),
    "model.layers.0.self_attn.q_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.0.mlp.up_proj.weight": (WIDE, HIDDEN),
    "model.layers.0.mlp.up_proj.bias": (WIDE,),
    "model.layers.0.mlp.down_proj.weight": (HIDDEN, WIDE),
    "model.layers.0.input_layernorm.weight": (HIDDEN,),
    "model.layers.1.self_attn.o_proj.weight": (HIDDEN, HIDDEN),
    "model.layers.1.mlp.down_proj.weight": (HIDDEN, WIDE),
    "model.norm.weight": (HIDDEN,),
    "lm_head.weight": (VOCAB, HIDDEN),
}
#: Not floating point: no update, copied byte for byte.
INT_TENSOR = ("model.position_ids", (1, 100))
PROJECTIONS = [name for name in LLAMA_SHAPES if "_proj." in name]


def random_tensors(shapes: dict[str, tuple[int, ...]], seed: int, dtype=torch.bfloat16) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: (torch.randn(shape, generator=generator, dtype=torch.float64) * 0.5).to(dtype)
        for name, shape in shapes.items()
    }


def moved(tensors: dict, seed: int, scale: float, dtypes: dict | None = None) -> dict:
    """A copy of float `tensors` plus a small random update, each in `dtypes[name]` (default: its own)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            out[name] = tensor.clone()
            continue
        noise = torch.randn(tensor.shape, generator=generator, dtype=torch.float64) * scale
        out[name] = (tensor.double() + noise).to((dtypes or {}).get(name, tensor.dtype))
    return out


def with_int_tensor(tensors: dict) -> dict:
    name, shape = INT_TENSOR
    return {**tensors, name: torch.arange(math.prod(shape), dtype=torch.int64).reshape(shape)}


def write_model(directory: Path, tensors: dict, *, tied: bool = False) -> Path:
    """A model folder: one model.safetensors and a config.json that says whether lm_head is tied."""
    directory.mkdir(parents=True)
    save_file(
        {name: t.contiguous() for name, t in tensors.items()},
        directory / "model.safetensors",
        metadata={"format": "pt"},
    )
    (directory / "config.json").write_text(json.dumps({"tie_word_embeddings": tied}))
    return directory


def write_adapter(
    directory: Path,
    factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
    *,
    r: int,
    lora_alpha: float,
    fan_in_fan_out: bool = False,
    embeddings: tuple[str, ...] = (),
) -> Path:
    """A PEFT LoRA adapter as PEFT saves one: {module: (A [r, in], B [out, r])}.

    Modules in `embeddings` get PEFT's embedding keys (lora_embedding_A/B).
    """
    directory.mkdir(parents=True)
    stored = {}
    for module, (a, b) in factors.items():
        names = ("lora_embedding_A", "lora_embedding_B") if module in embeddings else ("lora_A.weight", "lora_B.weight")
        stored[f"{PEFT_PREFIX}{module}.{names[0]}"] = a.contiguous()
        stored[f"{PEFT_PREFIX}{module}.{names[1]}"] = b.contiguous()
    save_file(stored, directory / "adapter_model.safetensors", metadata={"format": "pt"})
    config = {
        "peft_type": "LORA",
        "r": r,
        "lora_alpha": lora_alpha,
        "fan_in_fan_out": fan_in_fan_out,
        "use_rslora": False,
        "target_modules": sorted({m.rsplit(".", 1)[-1] for m in factors}),
        "bias": "none",
        "modules_to_save": None,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


def load_model(directory: Path) -> dict:
    tensors = {}
    for file in sorted(Path(directory).glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def bits(tensor: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor as integers, so equality is bit equality (-0.0 != 0.0, NaN == NaN)."""
    view = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return tensor.contiguous().view(view)


def assert_bit_identical(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    wrong = {}
    for name, want in expected.items():
        got = actual[name]
        if got.dtype != want.dtype or got.shape != want.shape:
            wrong[name] = f"{got.dtype} {list(got.shape)} instead of {want.dtype} {list(want.shape)}"
        elif not torch.equal(bits(got), bits(want)):
            rows = (bits(got) != bits(want)).reshape(got.shape[0], -1).any(dim=1).nonzero().flatten().tolist()
            wrong[name] = f"rows {rows[:8]}{'...' if len(rows) > 8 else ''} of {got.shape[0]} differ"
    assert not wrong, f"not bit-identical to the oracle: {wrong}"


# ------------------------------------------------------------------ LoRA oracle

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def exact_lora_graft(weight, a, b, scale: float, alpha: float = 1.0, transposed: bool = False):
    """W + alpha * s * B @ A in float64 (exact up to 2^-53), and the magnitude its rounding errors scale with.

    `transposed` is PEFT's fan_in_fan_out / embedding layout: the update is (B @ A).T.
    """
    product, magnitude = b.double() @ a.double(), b.double().abs() @ a.double().abs()
    if transposed:
        product, magnitude = product.T, magnitude.T
    rows = min(product.shape[0], weight.shape[0])  # vocabulary rows both have
    exact, size = weight.double().clone(), weight.double().abs()
    exact[:rows] += alpha * scale * product[:rows]
    size[:rows] += abs(alpha * scale) * magnitude[:rows]
    return exact, size


def admissible_range(exact, magnitude, *, rank: int, compute=torch.float32, out=torch.bfloat16):
    """The least and greatest output a correct engine may write for each element.

    It computes in `compute` with one rounding per operation: the r-term dot product
    (|error| <= gamma_r * sum |b_k a_k|), the scale and alpha (each rounded to `compute`,
    then multiplied) and the addition of W: gamma_(r+5) * magnitude in all. Its result is
    then rounded once to `out`; rounding is monotone, so the output lies between the
    roundings of the interval's ends. For float64 arithmetic the oracle is float64 too:
    the bound is tripled to cover the oracle's own rounding.
    """
    n = rank + 5
    unit = UNIT_ROUNDOFF[compute]
    error = n * unit / (1 - n * unit) * magnitude * (3 if compute == torch.float64 else 1)
    low, high = exact - error, exact + error
    if compute == torch.float32:  # the engine's value is a float32 inside [low, high]
        low32, high32 = low.float(), high.float()
        low32 = torch.where(low32.double() > low, torch.nextafter(low32, torch.tensor(-math.inf)), low32)
        high32 = torch.where(high32.double() < high, torch.nextafter(high32, torch.tensor(math.inf)), high32)
        low, high = low32, high32
    return low.to(out), high.to(out)


def assert_correctly_rounded(actual, low, high, what: str = "") -> float:
    """Every element inside its admissible range; returns the share of elements the range pins to one value."""
    assert actual.dtype == low.dtype and actual.shape == low.shape, what
    inside = (low.double() <= actual.double()) & (actual.double() <= high.double())
    if not inside.all():
        index = tuple(int(i) for i in (~inside).nonzero()[0])
        raise AssertionError(
            f"{what}: {int((~inside).sum())} of {actual.numel()} elements are not a correct "
            f"rounding; first at {index}: {float(actual[index])!r} outside "
            f"[{float(low[index])!r}, {float(high[index])!r}]"
        )
    return float((low == high).double().mean())


def truncated_to_bfloat16(values: torch.Tensor) -> torch.Tensor:
    """float32 values cut to bfloat16 by dropping the low 16 bits (truncation, not rounding)."""
    return (values.float().contiguous().view(torch.int32) & -65536).view(torch.float32).bfloat16()


def ulps(a: torch.Tensor, b: torch.Tensor) -> int:
    """Largest distance between two tensors in representable steps (units in the last place), across zero too."""
    assert a.dtype == b.dtype and a.shape == b.shape
    magnitude = {2: 0x7FFF, 4: 0x7FFFFFFF}[a.element_size()]

    def ordered(t):  # sign-magnitude bit patterns -> integers in the order of the values
        pattern = bits(t).long()
        return torch.where(pattern < 0, -(pattern & magnitude), pattern)

    return int((ordered(a) - ordered(b)).abs().max()) if a.numel() else 0
