"""The delta directory's format: what is stored for each update, its manifest's tensor specs, and reading back.

A dense update (or the dense parts of one, summed) is one tensor of the
chosen dtype; a LoRA part is its two factors, copied bit for bit, named
``{tensor}.lora_A`` / ``{tensor}.lora_B``, with its scale and layout in the
manifest's ``tensors`` entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shadowft.engine.dtypes import itemsize
from shadowft.engine.kernels import difference_block
from shadowft.engine.layout import DELTA_MANIFEST, DeltaError
from shadowft.engine.numerics import Block, Scratch, compute_dtype, encode
from shadowft.engine.parts import DeltaEntry, FullPart, LoraPart
from shadowft.engine.reader import Checkpoint
from shadowft.engine.tensors import TensorInfo
from shadowft.engine.writer import OutputTensor, SafetensorsWriter, output_tensor

DELTA_FORMAT = "shadowft-delta"
FORMAT_VERSION = 1


def storage_plan(
    entries: dict[str, DeltaEntry], code: str
) -> tuple[list[tuple[OutputTensor, TensorInfo | DeltaEntry]], dict[str, dict[str, Any]]]:
    """The stored tensors (each from a source tensor or a dense entry) and the manifest's tensor specs."""
    planned: list[tuple[OutputTensor, TensorInfo | DeltaEntry]] = []
    specs: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        parts = []
        # dense parts (a saved module, a LoRA bias) are stored summed, as one tensor
        dense = DeltaEntry(name, entry.shape, tuple(p for p in entry.parts if isinstance(p, FullPart)))
        if dense.parts:
            if code == "BF16" and "F64" in dense.dtypes:
                raise DeltaError(f"{name!r} is float64: save the delta as float32 or float64")
            planned.append((output_tensor(name, code, entry.shape), dense))
            parts.append({"form": "full", "tensor": name})
        for part in entry.parts:
            if isinstance(part, LoraPart):
                a_key, b_key = f"{name}.lora_A", f"{name}.lora_B"
                planned.append((output_tensor(a_key, part.a.dtype, part.a.shape), part.a))
                planned.append((output_tensor(b_key, part.b.dtype, part.b.shape), part.b))
                parts.append(
                    {
                        "form": "lora",
                        "A": a_key,
                        "B": b_key,
                        "rank": part.rank,
                        "scale": part.scale,
                        "layout": "transposed" if part.transposed else "standard",
                    }
                )
        specs[name] = {"shape": list(entry.shape), "parts": parts}
    return planned, specs


def read_delta_manifest(path: Path, manifest_path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise DeltaError(f"{path}: not a delta directory ({DELTA_MANIFEST} missing)") from None
    except json.JSONDecodeError as exc:
        raise DeltaError(f"{manifest_path}: invalid JSON ({exc})") from None
    if manifest.get("format") != DELTA_FORMAT or manifest.get("format_version") != FORMAT_VERSION:
        raise DeltaError(f"{manifest_path}: not a {DELTA_FORMAT} v{FORMAT_VERSION} manifest")
    return manifest


def save_block(
    dense: DeltaEntry,
    block: Block,
    tensor: OutputTensor,
    fused: FullPart | None,
    writer: SafetensorsWriter,
    scratch: Scratch,
) -> int:
    """One block of a stored update: by the compiled kernel when `fused` (`difference_part`) and no NaN comes
    out, else numpy."""
    data = difference_block(fused, block, scratch) if fused is not None else None
    if data is None:
        values = scratch.work(1, block.count, compute_dtype(*dense.dtypes))
        dense.fill(block, values, scratch)
        data = encode(values, tensor.dtype, scratch)
    writer.write(tensor.name, block.start * itemsize(tensor.dtype), data)
    return len(data)


def entry_from_manifest(name: str, spec: dict[str, Any], checkpoint: Checkpoint) -> DeltaEntry:
    def tensor(key: str) -> TensorInfo:
        if key not in checkpoint:
            raise DeltaError(f"{checkpoint.path}: manifest lists {key!r} for {name!r}, but no such tensor is stored")
        return checkpoint[key]

    shape = tuple(spec["shape"])
    parts: list[FullPart | LoraPart] = []
    for part in spec["parts"]:
        if part["form"] == "full":
            stored = tensor(part["tensor"])
            if stored.shape != shape:
                raise DeltaError(
                    f"{checkpoint.path}: {name!r} is stored with shape {list(stored.shape)}, "
                    f"manifest says {list(shape)}"
                )
            parts.append(FullPart(stored))
        elif part["form"] == "lora":
            lora = LoraPart(tensor(part["A"]), tensor(part["B"]), float(part["scale"]), part["layout"] == "transposed")
            if lora.shape != shape or len(lora.b.shape) != 2 or lora.b.shape[1] != lora.rank:
                raise DeltaError(f"{checkpoint.path}: LoRA factors of {name!r} do not make shape {list(shape)}")
            parts.append(lora)
        else:
            raise DeltaError(f"{checkpoint.path}: unknown part form {part['form']!r} for {name!r}")
    return DeltaEntry(name, shape, tuple(parts))
