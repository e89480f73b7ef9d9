"""Approximate a full delta by a PEFT LoRA adapter (truncated SVD per weight matrix).

For each 2-D weight update D of a linear layer, D ~= B @ A with B = U_k S_k and
A = V_k^T from the singular value decomposition, keeping either a fixed rank
or the smallest rank that keeps a fraction of the energy (sum of squared
singular values). The adapter sets lora_alpha = r per module, so its scaling
is 1 and merging it adds exactly B @ A. Tensors a LoRA adapter cannot express
(norms, biases, embeddings, lm_head) are left out and reported.

Unlike grafting, this holds one weight matrix (float32) and the SVD's
workspace in memory at a time, and a full SVD costs O(m n min(m, n)).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from shadowft.engine.extraction import Delta
from shadowft.engine.layout import PEFT_PREFIX, DeltaError, is_vocab_indexed
from shadowft.engine.numerics import Scratch, blocks
from shadowft.engine.parts import DeltaEntry
from shadowft.engine.writer import SafetensorsWriter, output_tensor
from shadowft.io import atomic_directory, atomic_write_json


def delta_to_lora(
    delta: Path | Delta, out: Path, *, rank: int | None = None, energy: float | None = None, progress: bool = True
) -> dict[str, Any]:
    """Write a PEFT LoRA adapter approximating a full delta; return a report with reconstruction errors.

    Give exactly one of `rank` (the same rank for every matrix, capped by its
    size) or `energy` in (0, 1]. The report (also written as
    ``shadowft_lowrank.json`` beside the adapter) gives, per module, the rank
    and the relative Frobenius error ||D - B A|| / ||D||, plus the overall
    error over all approximated matrices and the tensors left out.
    """
    if (rank is None) == (energy is None):
        raise DeltaError("give exactly one of rank or energy")
    if rank is not None and rank < 1:
        raise DeltaError(f"rank must be at least 1, got {rank}")
    if energy is not None and not 0 < energy <= 1:
        raise DeltaError(f"energy must be in (0, 1], got {energy}")
    opened = Delta.load(delta) if not isinstance(delta, Delta) else None
    source = opened or delta
    try:
        if source.kind != "full":
            raise DeltaError("this is a LoRA delta already: its adapter is the low-rank form")
        return _write_adapter(source, Path(out), rank, energy, progress)
    finally:
        if opened is not None:
            opened.close()


def _write_adapter(delta: Delta, out: Path, rank: int | None, energy: float | None, progress: bool) -> dict[str, Any]:
    modules, factors, left_out, (squared_error, squared_norm) = _factorize(delta, rank, energy, progress)
    ranks = {module: info["rank"] for module, info in modules.items()}
    common = max(ranks.values())
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": delta.sources.get("base"),
        "r": common,
        "lora_alpha": common,
        "use_rslora": False,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "target_modules": sorted(modules),
        # every module's scaling is alpha / r = 1: one pattern per module whose rank differs
        "rank_pattern": {re.escape(m): r for m, r in ranks.items() if r != common},
        "alpha_pattern": {re.escape(m): r for m, r in ranks.items() if r != common},
    }
    report = {
        "method": "truncated SVD",
        "rank": rank,
        "energy": energy,
        "overall_relative_error": math.sqrt(squared_error / squared_norm) if squared_norm else 0.0,
        "modules": modules,
        "left_out": {name: {"norm": norm} for name, norm in left_out.items()},
        "sources": delta.sources,
    }
    with atomic_directory(out) as tmp:
        planned = [output_tensor(key, "F32", value.shape) for key, value in factors.items()]
        with SafetensorsWriter(tmp, planned, prefix="adapter_model", max_shard_bytes=1 << 62) as writer:
            for key, value in factors.items():
                writer.write(key, 0, memoryview(value.reshape(-1).view(np.uint8)))
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        atomic_write_json(tmp / "shadowft_lowrank.json", report)
    return report


def _factorize(
    delta: Delta, rank: int | None, energy: float | None, progress: bool
) -> tuple[dict[str, dict[str, Any]], dict[str, np.ndarray], dict[str, float], tuple[float, float]]:
    """Per 2-D linear weight: its report entry and factors; the norms of the tensors left out; the error sums."""
    from tqdm.auto import tqdm

    modules: dict[str, dict[str, Any]] = {}
    factors: dict[str, np.ndarray] = {}
    left_out: dict[str, float] = {}
    squared_error = squared_norm = 0.0
    scratch = Scratch()
    for name, entry in tqdm(delta.entries.items(), desc="delta-to-lora", disable=not progress):
        if len(entry.shape) != 2 or not name.endswith(".weight") or is_vocab_indexed(name):
            left_out[name] = _norm(entry, scratch)
            continue
        matrix = _dense(entry, scratch).reshape(entry.shape)
        u, s, vt = np.linalg.svd(matrix, full_matrices=False)
        total = float(np.sum(np.square(s, dtype=np.float64)))
        kept = _choose_rank(s, rank, energy)
        b, a = u[:, :kept] * s[:kept], vt[:kept]
        error = float(np.linalg.norm(matrix - b @ a))
        module = name.removesuffix(".weight")
        factors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(a, np.float32)
        factors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(b, np.float32)
        modules[module] = {
            "rank": kept,
            "relative_error": error / math.sqrt(total) if total else 0.0,
            "energy_kept": float(np.sum(np.square(s[:kept], dtype=np.float64)) / total) if total else 1.0,
        }
        squared_error += error**2
        squared_norm += total
    if not modules:
        raise DeltaError("the delta has no 2-D linear weights to approximate")

    return modules, factors, left_out, (squared_error, squared_norm)


def _dense(entry: DeltaEntry, scratch: Scratch) -> np.ndarray:
    """The whole update of one tensor in float32."""
    values = np.empty(math.prod(entry.shape), np.float32)
    for block in blocks(0, entry.rows, math.prod(entry.shape[1:])):
        entry.fill(block, values[block.start : block.start + block.count], scratch)
    return values


def _norm(entry: DeltaEntry, scratch: Scratch) -> float:
    """Frobenius norm of an update, a chunk at a time."""
    squares = 0.0
    for block in blocks(0, entry.rows, math.prod(entry.shape[1:])):
        values = scratch.work(1, block.count)
        entry.fill(block, values, scratch)
        squares += float(np.dot(values, values))
    return math.sqrt(squares)


def _choose_rank(singular_values: np.ndarray, rank: int | None, energy: float | None) -> int:
    if rank is not None:
        return min(rank, len(singular_values))
    squares = np.square(singular_values, dtype=np.float64)
    cumulative = np.cumsum(squares) / max(squares.sum(), np.finfo(np.float64).tiny)
    return int(min(np.searchsorted(cumulative, energy * (1 - 1e-12)) + 1, len(singular_values)))
