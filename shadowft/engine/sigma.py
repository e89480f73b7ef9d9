"""How far apart two models' weights are: the Shadow-FT paper's sigma, streamed.

Per tensor, sigma = sum|W_a - W_b| / (sum|W_a| + sum|W_b|), with the element
arithmetic in float32 (float64 for float64 inputs) and the sums accumulated in
float64 across chunks. A layer's sigma is the mean over its tensors; the
overall sigma is the mean over all ``layers.N.*`` tensors, as the paper
averages over ``model.layers.*``.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from shadowft.engine.layout import shared_rows
from shadowft.engine.numerics import (
    CHUNK_ELEMENTS,
    Block,
    Scratch,
    blocks,
    check_chunk_elements,
    compute_dtype,
    read_float,
)
from shadowft.engine.parallel import progress_bar, run_tasks
from shadowft.engine.reader import Checkpoint
from shadowft.engine.tensors import TensorInfo
from shadowft.io import atomic_write_text

_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")
COLUMNS = ("level", "name", "layer", "numel", "sum_abs_diff", "sum_abs_a", "sum_abs_b", "sigma")


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to (``model.layers.12.mlp...`` -> 12), else None."""
    match = _LAYER.search(name)
    return int(match.group(1)) if match else None


def tensor_type(name: str) -> str | None:
    """A layer tensor's name within its layer, the same in every layer
    (``model.layers.3.mlp.up_proj.weight`` -> ``mlp.up_proj``), else None."""
    match = _LAYER.search(name)
    return name[match.end() :].removesuffix(".weight") if match else None


def similarity(
    a: Path,
    b: Path,
    out_csv: Path,
    *,
    allow_pickle: bool = False,
    threads: int | None = None,
    progress: bool = True,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> dict[str, Any]:
    """Write sigma per tensor, per layer and overall to `out_csv`; return a summary.

    The CSV has columns level (tensor | layer | overall), name, layer, numel,
    sum_abs_diff, sum_abs_a, sum_abs_b, sigma. Tensors present in only one
    model, or not floating point, are skipped and listed in the summary. When
    vocabulary sizes differ, embeddings and lm_head are compared over their
    shared rows; any other shape difference is an error naming the tensor.
    `chunk_elements` is the largest streamed block (see
    `shadowft.engine.numerics.check_chunk_elements`).
    """
    chunk = check_chunk_elements(chunk_elements)
    with Checkpoint(a, allow_pickle=allow_pickle) as first, Checkpoint(b, allow_pickle=allow_pickle) as second:
        pairs, skipped = _compared_pairs(first, second)
        sums = _stream_sums(pairs, threads=threads, progress=progress, chunk=chunk)
        only_in_a = sorted(first.tensors.keys() - second.tensors.keys())
        only_in_b = sorted(second.tensors.keys() - first.tensors.keys())
    records, layers, overall = _records(pairs, sums)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(tuple("" if v is None else _format(v) for v in record) for record in records)
    atomic_write_text(Path(out_csv), buffer.getvalue())
    return {
        "overall_sigma": overall,
        "layers": layers,
        "tensors": len(pairs),
        "skipped": skipped,
        "only_in_a": only_in_a,
        "only_in_b": only_in_b,
        "csv": str(out_csv),
    }


def _compared_pairs(
    first: Checkpoint, second: Checkpoint
) -> tuple[list[tuple[TensorInfo, TensorInfo, int]], dict[str, str]]:
    """(tensor of A, tensor of B, rows compared) for every float tensor both have; the skipped ones."""
    pairs: list[tuple[TensorInfo, TensorInfo, int]] = []
    skipped = {}
    for name, left in first.tensors.items():
        right = second.tensors.get(name)
        if right is None:
            continue
        if not (left.is_float and right.is_float):
            skipped[name] = "not floating point"
            continue
        pairs.append((left, right, _compared_rows(left, right)))
    return pairs, skipped


def _stream_sums(
    pairs: list[tuple[TensorInfo, TensorInfo, int]], *, threads: int | None, progress: bool, chunk: int
) -> np.ndarray:
    """Per pair: sum|a - b|, sum|a|, sum|b| (float64 across chunks)."""
    sums = np.zeros((len(pairs), 3), np.float64)

    def tasks():
        for index, (left, right, rows) in enumerate(pairs):
            for block in blocks(0, rows, left.cols, chunk):
                yield functools.partial(_block_sums, index, left, right, block)

    def accumulate(result: tuple[int, float, float, float, int]) -> None:
        index, *values, nbytes = result
        sums[index] += values
        bar.update(nbytes)

    total = sum(rows * left.cols * (left.itemsize + right.itemsize) for left, right, rows in pairs)
    with progress_bar(total, "similarity", progress) as bar:
        run_tasks(tasks(), threads=threads, on_result=accumulate, chunk_elements=chunk)
    return sums


def _records(
    pairs: list[tuple[TensorInfo, TensorInfo, int]], sums: np.ndarray
) -> tuple[list[tuple], dict[int, float], float]:
    """The CSV rows (tensors, then layers, then overall), sigma per layer, and the overall sigma."""
    records = []
    per_layer: dict[int, list[float]] = defaultdict(list)
    for (left, _, rows), (diff, abs_a, abs_b) in zip(pairs, sums, strict=True):
        sigma = diff / (abs_a + abs_b) if abs_a + abs_b else 0.0
        layer = layer_index(left.name)
        if layer is not None:
            per_layer[layer].append(sigma)
        records.append(("tensor", left.name, layer, rows * left.cols, diff, abs_a, abs_b, sigma))
    layers = {layer: float(np.mean(values)) for layer, values in sorted(per_layer.items())}
    records += [("layer", f"layers.{layer}", layer, "", "", "", "", sigma) for layer, sigma in layers.items()]
    layer_sigmas = [value for values in per_layer.values() for value in values]
    overall = float(np.mean(layer_sigmas or [r[-1] for r in records if r[0] == "tensor"] or [float("nan")]))
    records.append(("overall", "overall", "", sum(r[3] for r in records if r[0] == "tensor"), "", "", "", overall))
    return records, layers, overall


def _compared_rows(left: TensorInfo, right: TensorInfo) -> int:
    """The rows both tensors have: all of them, or the shared vocabulary rows of embeddings and lm_head."""
    return shared_rows(left.name, left.shape, right.shape, ("model A", "model B"), "shared")


def _block_sums(
    index: int, left: TensorInfo, right: TensorInfo, block: Block, scratch: Scratch
) -> tuple[int, float, float, float, int]:
    dtype = compute_dtype(left.dtype, right.dtype)
    x = read_float(left, block.start, scratch.work(0, block.count, dtype), scratch)
    y = read_float(right, block.start, scratch.work(1, block.count, dtype), scratch)
    diff = np.subtract(x, y, out=scratch.work(2, block.count, dtype))
    # float32 pairwise sums per chunk are accurate to ~1e-7 relative; chunks add up in float64
    sum_diff = float(np.add.reduce(np.abs(diff, out=diff)))
    sum_x = float(np.add.reduce(np.abs(x, out=x)))
    sum_y = float(np.add.reduce(np.abs(y, out=y)))
    return index, sum_diff, sum_x, sum_y, block.count * (left.itemsize + right.itemsize)


def _format(value: Any) -> str:
    return repr(float(value)) if isinstance(value, (float, np.floating)) else str(value)
