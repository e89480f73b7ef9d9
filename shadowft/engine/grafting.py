"""Grafting: W_instruct + alpha * Delta, written as a model transformers loads.

Every output tensor is planned before the first byte (`plan_graft`): which
tensors take the update, which keep instruct's values and why (an `Action`),
how many rows a vocabulary mismatch leaves. Then `shadowft.engine.streaming` writes
the plan: grafted blocks are computed in float32 (float64 for float64 inputs)
and rounded once; kept tensors are copied byte for byte, or converted when the
output dtype differs.
"""

from __future__ import annotations

import functools
import json
import math
import re
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from shadowft.engine.deltaformat import FORMAT_VERSION
from shadowft.engine.dtypes import dtype_code, itemsize, torch_dtype_name
from shadowft.engine.extraction import GRAFT_MANIFEST, Delta, tie_hint
from shadowft.engine.kernels import graft_block as graft_kernel_block
from shadowft.engine.kernels import graft_part
from shadowft.engine.layout import (
    DeltaError,
    embedding_and_head,
    is_output_head,
    shared_rows,
)
from shadowft.engine.numerics import (
    Block,
    Scratch,
    blocks,
    byte_ranges,
    compute_dtype,
    encode,
    read_float,
)
from shadowft.engine.options import DeltaOptions
from shadowft.engine.parts import DeltaEntry, FullPart
from shadowft.engine.policy import Action, Selection
from shadowft.engine.provenance import InputSet, Provenance, index_files, model_files, versions
from shadowft.engine.reader import Checkpoint, ties_embeddings
from shadowft.engine.streaming import StreamPlan, Task, copy_bytes, stream
from shadowft.engine.tensors import TensorInfo
from shadowft.engine.writer import OutputTensor, SafetensorsWriter, output_tensor
from shadowft.io import atomic_write_json


@dataclass(frozen=True, kw_only=True)
class GraftOptions(DeltaOptions):
    """How to graft: alpha and the output dtype, besides what extraction shares (`DeltaOptions`).

    `dtype` overrides the output dtype of floating-point tensors (default:
    instruct's, per tensor). The fields are `graft`'s keywords and the
    command line's options (``shadowft graft --help``).
    """

    alpha: float = field(default=1.0, metadata={"help": "scale of the update", "type": float})
    dtype: str | None = field(
        default=None, metadata={"help": "output dtype of floating-point tensors (default: the instruct model's)"}
    )
    # derived from dtype in __post_init__
    out_code: str | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not math.isfinite(self.alpha):
            raise DeltaError(f"alpha must be a finite number, got {self.alpha!r}")
        object.__setattr__(self, "out_code", dtype_code(self.dtype) if self.dtype is not None else None)

    def describe(self) -> dict[str, Any]:
        """The "policy" a graft's manifest records."""
        return {
            **self.selection.describe(),
            "vocab_mismatch": self.vocab_mismatch,
            "dtype": torch_dtype_name(self.out_code) if self.out_code else "instruct's, per tensor",
            "arithmetic": "float32 (float64 for float64 inputs), one rounding to nearest even",
        }


@dataclass(frozen=True, eq=False)
class PlannedTensor:
    """How one output tensor is made: instruct's tensor, plus an update over its first rows."""

    name: str
    source: TensorInfo
    out_dtype: str
    entry: DeltaEntry | None
    graft_rows: int
    action: Action
    reason: str | None = None

    @property
    def note(self) -> str:
        """The manifest's words for it, e.g. "kept: not selected"."""
        return self.action.value if self.reason is None else f"{self.action.value}: {self.reason}"

    @property
    def fused(self) -> FullPart | None:
        """The update's part when the compiled kernel grafts it (`shadowft.engine.kernels.graft_part`)."""
        return graft_part(self.source.dtype, self.out_dtype, self.entry)

    @property
    def output(self) -> OutputTensor:
        if self.out_dtype == self.source.dtype:
            return OutputTensor(self.name, self.source.dtype, self.source.shape, self.source.nbytes)
        return output_tensor(self.name, self.out_dtype, self.source.shape)


def graft(
    instruct: Path, delta: Path | Delta, out: Path, options: GraftOptions | None = None, **settings: Any
) -> dict[str, Any]:
    """Write W_instruct + alpha * Delta to `out` as a model transformers loads; returns the manifest.

    `delta` is a directory from `extract_delta` or a `Delta` (e.g. from
    `Delta.from_models(base, tuned)`, which grafts without storing the delta).
    The settings are a `GraftOptions`, or its fields as keywords. Tensors outside the
    selection keep instruct's values. Config, tokenizer and generation files
    come from `instruct`; ``shadowft_manifest.json`` records inputs (sha256),
    alpha, policy, per-tensor actions and versions.
    """
    if options is not None and settings:
        raise TypeError("give either a GraftOptions or its fields as keywords, not both")
    options = options if options is not None else GraftOptions(**settings)
    opened = Delta.load(delta) if not isinstance(delta, Delta) else None
    try:
        with Checkpoint(instruct, allow_pickle=options.allow_pickle) as instruct_ckpt:
            return _graft(instruct_ckpt, opened or delta, Path(out), options)
    finally:
        if opened is not None:
            opened.close()


def _graft(instruct: Checkpoint, delta: Delta, out: Path, options: GraftOptions) -> dict[str, Any]:
    plan = plan_graft(instruct, delta, options)
    copied = model_files(instruct.path) if instruct.path.is_dir() else []
    instruct_files = (*instruct.files, *index_files(instruct.path), *copied)
    provenance = Provenance({"instruct": InputSet(instruct.path, instruct_files)}) | delta.provenance
    update_scale = None if options.alpha == 1 else options.alpha  # multiplying by 1 is exact: skip the pass

    def tasks(writer: SafetensorsWriter) -> Iterator[Task]:
        for item in plan:
            yield from _tensor_tasks(item, update_scale, writer, options.write.chunk_elements)

    def finish(tmp: Path, writer: SafetensorsWriter, inputs: dict[str, Any]) -> dict[str, Any]:
        for file in copied:
            shutil.copyfile(file, tmp / file.name)
        if options.out_code is not None and (tmp / "config.json").is_file():
            _set_config_dtype(tmp / "config.json", options.out_code)
        files = [*writer.file_names, *writer.index_names, *(f.name for f in copied)]
        return _manifest(instruct, delta, options, plan, inputs, files)

    outputs = [item.output for item in plan]
    return stream(out, StreamPlan(outputs, tasks, "model", "graft", GRAFT_MANIFEST, finish), provenance, options.write)


def _tensor_tasks(
    item: PlannedTensor, update_scale: float | None, writer: SafetensorsWriter, chunk: int
) -> Iterator[Task]:
    """The blocks of one output tensor: grafted rows first, then the rest copied or converted."""
    source, cols, fused = item.source, item.source.cols, item.fused
    if item.entry is not None:
        for block in blocks(0, item.graft_rows, cols, chunk):
            yield functools.partial(_graft_block, item, block, update_scale, fused, writer)
    kept_from_row = item.graft_rows if item.entry is not None else 0
    if item.out_dtype == source.dtype:
        offset = kept_from_row * cols * source.itemsize
        for byte0, byte1 in byte_ranges(source.nbytes - offset, chunk * 8):
            yield functools.partial(copy_bytes, source, offset + byte0, offset + byte1, writer, item.name)
    else:
        for block in blocks(kept_from_row, source.rows, cols, chunk):
            yield functools.partial(_graft_block, item, block, None, None, writer)


def _manifest(
    instruct: Checkpoint,
    delta: Delta,
    options: GraftOptions,
    plan: list[PlannedTensor],
    inputs: dict[str, Any],
    files: list[str],
) -> dict[str, Any]:
    actions = Counter(item.action for item in plan)
    return {
        "format": "shadowft-graft",
        "format_version": FORMAT_VERSION,
        "formula": "W_instruct + alpha * Delta",
        "alpha": options.alpha,
        "policy": options.describe(),
        "tied_embeddings": {"instruct": ties_embeddings(instruct), "delta": delta.tied_embeddings},
        "delta": {"kind": delta.kind, "sources": delta.sources, **delta.record.for_graft()},
        "inputs": inputs,
        "counts": {
            "tensors": len(plan),
            "grafted": actions[Action.GRAFTED],
            "kept": actions[Action.KEPT],
            "partially_grafted": actions[Action.PARTIALLY_GRAFTED],
        },
        "tensors": {item.name: item.note for item in plan},
        "files": files,
        "versions": versions(),
    }


def plan_graft(instruct: Checkpoint, delta: Delta, options: GraftOptions) -> list[PlannedTensor]:
    """Decide every output tensor before writing anything; raise on the first inconsistency."""
    instruct_tied = ties_embeddings(instruct)
    tied_update = _tied_head_update(instruct, delta, instruct_tied)
    plan = [_plan_tensor(name, source, delta, options, tied_update) for name, source in instruct.tensors.items()]
    if options.alpha != 0:
        _refuse_unplaced_updates(instruct, delta, options.selection, instruct_tied)
    return plan


def _tied_head_update(instruct: Checkpoint, delta: Delta, instruct_tied: bool) -> tuple[str, str] | None:
    """(head, embedding) when instruct's untied head should take the update of a tied delta's embedding."""
    embedding, head = embedding_and_head(instruct.tensors)
    if head is not None and not instruct_tied and delta.tied_embeddings and embedding in delta.entries:
        return head, embedding
    return None


def _plan_tensor(
    name: str, source: TensorInfo, delta: Delta, options: GraftOptions, tied_update: tuple[str, str] | None
) -> PlannedTensor:
    out_dtype = options.out_code if options.out_code is not None and source.is_float else source.dtype
    entry, action, reason = delta.entries.get(name), Action.GRAFTED, None
    if options.alpha == 0:
        entry, action, reason = None, Action.KEPT, "alpha is 0"
    elif not options.selection.selects(name):
        entry, action, reason = None, Action.KEPT, "not selected"
    elif entry is None and tied_update is not None and name == tied_update[0]:
        entry, reason = delta.entries[tied_update[1]], f"update of the tied {tied_update[1]}"
    elif entry is None and delta.covers(name):
        raise DeltaError(f"tensor {name!r} is in the instruct model but missing from the delta ({tie_hint(name)})")
    elif entry is None:
        action, reason = Action.KEPT, "no update in the delta"
    rows = 0
    if entry is not None:
        if not source.is_float:
            raise DeltaError(f"cannot graft {name!r}: instruct stores it as {source.dtype}, not floating point")
        labels = ("the instruct model", "the delta")
        rows = shared_rows(name, source.shape, entry.shape, labels, options.vocab_mismatch)
        if rows is None:
            entry, action, reason = None, Action.KEPT, "vocabulary sizes differ (vocab_mismatch='keep')"
        elif rows < source.rows:
            action = Action.PARTIALLY_GRAFTED
            reason = f"rows [0, {rows}) of {source.rows} (vocab_mismatch='shared')"
    arithmetic = compute_dtype(source.dtype, *(entry.dtypes if entry else ()))
    if out_dtype == "BF16" and arithmetic == np.float64 and (entry is not None or source.dtype != "BF16"):
        raise DeltaError(
            f"{name!r}: float64 arithmetic rounded to bfloat16 would round twice; choose dtype float32 or float64"
        )
    return PlannedTensor(name, source, out_dtype, entry, rows or 0, action, reason)


def _refuse_unplaced_updates(instruct: Checkpoint, delta: Delta, selection: Selection, instruct_tied: bool) -> None:
    """Every selected update must land on an instruct tensor (a tied head's stored copy excepted)."""
    for name in delta.entries:
        if name in instruct or not selection.selects(name):
            continue
        if is_output_head(name) and instruct_tied:
            if delta.tied_embeddings:
                continue  # a stored copy of the tied head: the embedding's update covers it
            raise DeltaError(
                f"the instruct model ties its output head to the embeddings, but the delta updates "
                f"{name!r} separately (its base model is untied); exclude it (exclude=['{name}'] / "
                f"--exclude '{re.escape(name)}') to graft the rest"
            )
        raise DeltaError(f"tensor {name!r} is in the delta but missing from the instruct model")


def _graft_block(
    item: PlannedTensor,
    block: Block,
    alpha: float | None,
    fused: FullPart | None,
    writer: SafetensorsWriter,
    scratch: Scratch,
) -> int:
    """One block of `item`: by the compiled kernel when `fused` (`item.fused`) and no NaN comes out, else numpy."""
    entry = item.entry if block.row1 <= item.graft_rows else None
    data = graft_kernel_block(item.source, fused, block, alpha, scratch) if entry is not None and fused else None
    if data is None:
        dtype = compute_dtype(item.source.dtype, *(entry.dtypes if entry else ()))
        values = read_float(item.source, block.start, scratch.work(0, block.count, dtype), scratch)
        if entry is not None:
            update = scratch.work(1, block.count, dtype)
            entry.fill(block, update, scratch)
            if alpha is not None:
                np.multiply(update, dtype.type(alpha), out=update)
            np.add(values, update, out=values)
        data = encode(values, item.out_dtype, scratch)
    writer.write(item.name, block.start * itemsize(item.out_dtype), data)
    return len(data)


def _set_config_dtype(config_path: Path, code: str) -> None:
    config = json.loads(config_path.read_text())
    keys = [key for key in ("torch_dtype", "dtype") if key in config] or ["torch_dtype"]
    for key in keys:
        config[key] = torch_dtype_name(code)
    atomic_write_json(config_path, config)
