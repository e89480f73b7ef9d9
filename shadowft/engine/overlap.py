"""How the updates of a Shadow-FT pair overlap, streamed: does the update learned on BASE mean to
INSTRUCT what it meant to BASE?

Three updates of one pair, tensor by tensor:

- ``I``: INSTRUCT - BASE, what instruction tuning changed (the paper's sigma measures its size);
- ``B``: tuned BASE - BASE, the update Shadow-FT grafts (a full model's difference, or a LoRA
  adapter's scaled B @ A, computed a block of rows at a time);
- ``F``: tuned INSTRUCT - INSTRUCT, the same tuning run on INSTRUCT (the paper's baseline), optional.

Per tensor, every element is computed in float64 (exact for bfloat16, float16 and float32
inputs) and the squared norms, dot products and absolute sums are accumulated in float64 across
blocks. From them: sigma (as `shadowft.engine.sigma`), ``rel_i`` = ||I|| / ||W_BASE|| (how far
instruction tuning moved the weights, needing no training: a go/no-go hint beside sigma),
``cos_ib`` = cos(I, B) (a graft adds B to a model that already holds I: where they overlap it adds
what INSTRUCT already has), ``ratio_bi`` = ||B|| / ||I||, ``cos_bf`` = cos(B, F) (the same tuning
making the same change on both models, which grafting assumes) and ``ratio_fb`` = ||F|| / ||B||.

A layer pools its tensors (the cosine of the layer's whole update, its norms over all its
elements) and so does the overall row, over the layers' tensors; sigma alone is, as the paper
has it, the mean of the tensors' sigmas. A ratio or cosine whose denominator is zero (an update
that leaves the tensor alone: a LoRA adapter's untargeted tensors, INSTRUCT equal to BASE) is
undefined and written as an empty cell.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shadowft.engine.extraction import Delta
from shadowft.engine.layout import DeltaError
from shadowft.engine.numerics import Block, Scratch, blocks, read_float
from shadowft.engine.options import DeltaOptions
from shadowft.engine.parallel import progress_bar, run_tasks
from shadowft.engine.parts import DeltaEntry
from shadowft.engine.sigma import layer_index
from shadowft.engine.tensors import TensorInfo
from shadowft.io import atomic_write_text

#: The accumulated sums, per tensor: absolute sums for sigma, then squared norms and dot products.
SUMS = (
    "sum_abs_diff",
    "sum_abs_base",
    "sum_abs_instruct",
    "sq_base",
    "sq_i",
    "sq_b",
    "sq_f",
    "dot_ib",
    "dot_if",
    "dot_bf",
)
#: What the sums give (module docstring).
MEASURES = ("sigma", "rel_i", "cos_ib", "ratio_bi", "cos_if", "cos_bf", "ratio_fb")
COLUMNS = ("level", "name", "layer", "numel", *SUMS, *MEASURES)
_FLOAT64 = np.dtype(np.float64)
_BUFFERS = "overlap_buffers"


@dataclass(frozen=True)
class Updates:
    """The model folders behind B and F: a tuned model (full) or a LoRA adapter, each optional."""

    tuned: Path | None = None
    adapter: Path | None = None
    instruct_tuned: Path | None = None
    instruct_adapter: Path | None = None

    def __post_init__(self) -> None:
        for full, lora, what in (
            (self.tuned, self.adapter, "tuned BASE"),
            (self.instruct_tuned, self.instruct_adapter, "tuned INSTRUCT"),
        ):
            if full is not None and lora is not None:
                raise DeltaError(f"give the {what} as a tuned model or as a LoRA adapter, not both")
        if self.has_f and not self.has_b:
            raise DeltaError("the tuned INSTRUCT is compared with the tuned BASE: give the tuned BASE too")

    @property
    def has_b(self) -> bool:
        return self.tuned is not None or self.adapter is not None

    @property
    def has_f(self) -> bool:
        return self.instruct_tuned is not None or self.instruct_adapter is not None


@dataclass(frozen=True, eq=False)
class _Tensor:
    """One compared tensor: BASE's and INSTRUCT's weights over the rows compared, and B and F there
    (None where the update leaves the tensor alone)."""

    name: str
    base: TensorInfo
    instruct: TensorInfo
    rows: int
    b: DeltaEntry | None
    f: DeltaEntry | None

    @property
    def cols(self) -> int:
        return self.base.cols


def measure_overlap(
    base: Path,
    instruct: Path,
    out_csv: Path,
    updates: Updates = Updates(),
    options: DeltaOptions | None = None,
) -> dict[str, Any]:
    """Write the overlap of the pair's updates per tensor, per layer and overall to `out_csv`; return a summary.

    `updates` names the tuned BASE and tuned INSTRUCT (either may be absent: without them the
    CSV holds sigma and rel_i alone, the measures that need no training). `options` selects the
    tensors (preset, include, exclude: the graft's own selection is what it adds), the
    vocabulary policy between BASE and INSTRUCT, pickle reading, threads, progress and block size.
    """
    options = options or DeltaOptions()
    with contextlib.ExitStack() as opened:
        deltas = _open_deltas(base, instruct, updates, options, opened)
        tensors, not_compared = _tensors(*deltas)
        sums = _stream_sums(tensors, options)
    records = _records(tensors, sums, has_b=updates.has_b, has_f=updates.has_f)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(tuple(_format(value) for value in record) for record in records)
    atomic_write_text(Path(out_csv), buffer.getvalue())
    overall = dict(zip(COLUMNS, records[-1], strict=True))
    return {
        "overall": {measure: overall[measure] for measure in MEASURES},
        "layers": {record[2]: dict(zip(COLUMNS, record, strict=True)) for record in records if record[0] == "layer"},
        "tensors": len(tensors),
        "not_compared": not_compared,
        "csv": str(out_csv),
    }


def _open_deltas(
    base: Path, instruct: Path, updates: Updates, options: DeltaOptions, opened: contextlib.ExitStack
) -> tuple[Delta, Delta | None, Delta | None]:
    """I (validated like an extraction: names, shapes, the vocabulary policy), B and F, each closed by `opened`."""

    def delta(what: str, reference: Path, tuned: Path | None, adapter: Path | None) -> Delta | None:
        if tuned is None and adapter is None:
            return None
        opener = Delta.from_models if tuned is not None else Delta.from_adapter
        try:
            found = opener(
                reference,
                tuned if tuned is not None else adapter,
                selection=options.selection,
                vocab_mismatch=options.vocab_mismatch,
                allow_pickle=options.allow_pickle,
            )
        except DeltaError as error:  # its words are an extraction's: say which update they are about
            raise DeltaError(f"{what} ({tuned or adapter} from {reference}): {error}") from None
        return opened.enter_context(found)

    return (
        delta("I, INSTRUCT's update of BASE", base, instruct, None),
        delta("B, the tuned BASE's update", base, updates.tuned, updates.adapter),
        delta("F, the tuned INSTRUCT's update", instruct, updates.instruct_tuned, updates.instruct_adapter),
    )


def _tensors(i: Delta, b: Delta | None, f: Delta | None) -> tuple[list[_Tensor], dict[str, str]]:
    """Every tensor of I with its B and F; the tensors B or F change that I leaves out, and why."""
    tensors = []
    for name, entry in i.entries.items():
        # Delta.from_models makes one dense part per tensor: INSTRUCT's tensor minus BASE's.
        (part,) = entry.parts
        b_entry = b.entries.get(name) if b is not None else None
        f_entry = f.entries.get(name) if f is not None else None
        rows = min(e.rows for e in (entry, b_entry, f_entry) if e is not None)
        for other, what in ((b_entry, "tuned BASE"), (f_entry, "tuned INSTRUCT")):
            if other is not None and other.cols != entry.cols:
                raise DeltaError(f"shape mismatch for {name!r}: the {what}'s update has {list(other.shape)}")
        tensors.append(_Tensor(name, part.subtrahend, part.minuend, rows, b_entry, f_entry))
    not_compared = {
        name: f"not in the pair's compared tensors ({i.record.omitted.get(name, 'not selected')})"
        for delta in (b, f)
        if delta is not None
        for name in delta.entries
        if name not in i.entries
    }
    return tensors, dict(sorted(not_compared.items()))


def _stream_sums(tensors: list[_Tensor], options: DeltaOptions) -> np.ndarray:
    """Per tensor, the SUMS over its compared rows (float64 across blocks)."""
    sums = np.zeros((len(tensors), len(SUMS)), np.float64)
    chunk = options.chunk_elements

    def tasks() -> Iterator[functools.partial]:
        for index, tensor in enumerate(tensors):
            for block in blocks(0, tensor.rows, tensor.cols, chunk):
                yield functools.partial(_block_sums, index, tensor, block)

    def accumulate(result: tuple[int, np.ndarray, int]) -> None:
        index, values, nbytes = result
        sums[index] += values
        bar.update(nbytes)

    total = sum(tensor.rows * tensor.cols * (tensor.base.itemsize + tensor.instruct.itemsize) for tensor in tensors)
    with progress_bar(total, "overlap", options.progress) as bar:
        run_tasks(tasks(), threads=options.threads, on_result=accumulate, chunk_elements=chunk)
    return sums


def _block_sums(index: int, tensor: _Tensor, block: Block, scratch: Scratch) -> tuple[int, np.ndarray, int]:
    count = block.count
    # Work buffers 0 and 1 hold the weights; 2 is the updates' own scratch (FullPart, LoraPart), so
    # B and F get buffers of their own, kept per thread.
    extra = scratch.cache.get(_BUFFERS)
    if extra is None:
        extra = scratch.cache[_BUFFERS] = np.empty((2, scratch.chunk), np.float64)
    w = read_float(tensor.base, block.start, scratch.work(0, count, _FLOAT64), scratch)
    i = read_float(tensor.instruct, block.start, scratch.work(1, count, _FLOAT64), scratch)
    b = _update(tensor.b, block, extra[0, :count], scratch)
    f = _update(tensor.f, block, extra[1, :count], scratch)
    sum_abs_base, sum_abs_instruct, sq_base = np.add.reduce(np.abs(w)), np.add.reduce(np.abs(i)), np.dot(w, w)
    i = np.subtract(i, w, out=i)
    # In SUMS's order.
    values = (
        np.add.reduce(np.abs(i)),
        sum_abs_base,
        sum_abs_instruct,
        sq_base,
        np.dot(i, i),
        np.dot(b, b),
        np.dot(f, f),
        np.dot(i, b),
        np.dot(i, f),
        np.dot(b, f),
    )
    return index, np.array(values, np.float64), count * (tensor.base.itemsize + tensor.instruct.itemsize)


def _update(entry: DeltaEntry | None, block: Block, out: np.ndarray, scratch: Scratch) -> np.ndarray:
    """The update over `block` in `out`: zeros where there is none (no tuned model, or a LoRA adapter
    that leaves the tensor alone; `_records` tells the two apart)."""
    if entry is None:
        out.fill(0.0)
    else:
        entry.fill(block, out, scratch)
    return out


def _records(tensors: list[_Tensor], sums: np.ndarray, *, has_b: bool, has_f: bool) -> list[tuple]:
    """The CSV rows: tensors, then layers (pooled), then overall (pooled over the layers' tensors)."""
    # A missing update (no tuned model given) is no sum at all, not a zero one.
    sums = sums.copy()
    absent = {"sq_b", "dot_ib", "dot_bf"} if not has_b else set()
    absent |= {"sq_f", "dot_if", "dot_bf"} if not has_f else set()
    sums[:, [SUMS.index(key) for key in sorted(absent)]] = np.nan
    rows = [
        _Row(
            "tensor",
            tensor.name,
            layer_index(tensor.name),
            tensor.rows * tensor.cols,
            row,
            _ratio(row[0], row[1] + row[2]),
        )
        for tensor, row in zip(tensors, sums, strict=True)
    ]
    in_layers = [row for row in rows if row.layer is not None]
    for layer in sorted({row.layer for row in in_layers}):
        rows.append(_pool("layer", f"layers.{layer}", layer, [row for row in in_layers if row.layer == layer]))
    # Overall: the layers' tensors, as the paper averages over model.layers.*; all of them if none is in a layer.
    rows.append(_pool("overall", "overall", None, in_layers or rows))
    return [row.record() for row in rows]


@dataclass(frozen=True, eq=False)
class _Row:
    """A tensor's, a layer's or the overall row: its sums, and sigma (for a layer, its tensors' mean)."""

    level: str
    name: str
    layer: int | None
    numel: int
    sums: np.ndarray
    sigma: float

    def record(self) -> tuple:
        return (self.level, self.name, self.layer, self.numel, *self.sums, *_measures(self.sums, self.sigma))


def _pool(level: str, name: str, layer: int | None, rows: list[_Row]) -> _Row:
    """Several tensors as one: their sums added, sigma the mean of theirs (the paper's)."""
    if not rows:
        return _Row(level, name, layer, 0, np.full(len(SUMS), np.nan), math.nan)
    return _Row(
        level,
        name,
        layer,
        sum(row.numel for row in rows),
        np.sum([row.sums for row in rows], axis=0),
        float(np.mean([row.sigma for row in rows])),
    )


def _measures(row: np.ndarray, sigma: float) -> tuple[float, ...]:
    values = dict(zip(SUMS, row, strict=True))
    norms = {key: math.sqrt(values[f"sq_{key}"]) for key in ("base", "i", "b", "f")}
    return (
        sigma,
        _ratio(norms["i"], norms["base"]),
        _ratio(values["dot_ib"], norms["i"] * norms["b"]),
        _ratio(norms["b"], norms["i"]),
        _ratio(values["dot_if"], norms["i"] * norms["f"]),
        _ratio(values["dot_bf"], norms["b"] * norms["f"]),
        _ratio(norms["f"], norms["b"]),
    )


def _ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, NaN (undefined) where the denominator is zero or either is missing."""
    if math.isnan(numerator) or math.isnan(denominator) or denominator == 0:
        return math.nan
    return float(numerator / denominator)


def _format(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)
