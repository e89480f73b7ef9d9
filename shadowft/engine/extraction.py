"""Extraction: the `Delta`, made from two models, an adapter or a saved directory, and saved.

    W_shadow = W_instruct + alpha * Delta

where Delta = W_tuned - W_base after full fine-tuning of the base, or
Delta = s * B @ A for a LoRA adapter trained on the base, with
s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA).

A `Delta` is that update tensor by tensor, readable in row chunks: made from
two models (`Delta.from_models`), from a PEFT adapter (`Delta.from_adapter`),
or loaded from a directory written by `extract_delta` (`Delta.load`). Full and
LoRA deltas share one graft path (`shadowft.engine.grafting`). Inputs are validated
completely before anything is written, and outputs appear atomically, so an
error or a killed run never leaves a usable-looking output behind.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowft.engine.adapters import LORA_CONFIG_KEYS, adapter_entries, read_adapter_config
from shadowft.engine.deltaformat import (
    DELTA_FORMAT,
    FORMAT_VERSION,
    entry_from_manifest,
    read_delta_manifest,
    save_block,
    storage_plan,
)
from shadowft.engine.dtypes import dtype_code, torch_dtype_name
from shadowft.engine.kernels import difference_part
from shadowft.engine.layout import (
    DELTA_MANIFEST,
    MODEL_MANIFEST,
    DeltaError,
    check_vocab_policy,
    is_vocab_indexed,
    shared_rows,
)
from shadowft.engine.numerics import CHUNK_ELEMENTS, Scratch, blocks, byte_ranges
from shadowft.engine.options import DeltaOptions
from shadowft.engine.parts import DeltaEntry, FullPart
from shadowft.engine.policy import Selection
from shadowft.engine.provenance import InputSet, Provenance, checkpoint_inputs, index_files, versions
from shadowft.engine.reader import Checkpoint, ties_embeddings
from shadowft.engine.streaming import StreamPlan, WriteOptions, copy_bytes, stream
from shadowft.engine.tensors import TensorInfo
from shadowft.engine.writer import SafetensorsWriter

GRAFT_MANIFEST = MODEL_MANIFEST


@dataclass(frozen=True)
class DeltaRecord:
    """What a delta's manifests record besides its tensors: policy, omissions, LoRA settings, provenance."""

    selection: Selection
    vocab_mismatch: str
    omitted: dict[str, str] = field(default_factory=dict)
    lora: dict[str, Any] | None = None  # the adapter_config.json keys of a LoRA delta
    scaling: dict[str, float] | None = None  # per-module LoRA scale
    provenance: dict[str, Any] | None = None  # a loaded delta: the inputs its manifest recorded

    def for_graft(self) -> dict[str, Any]:
        """The keys a graft's manifest quotes under "delta"."""
        recorded = {
            "selection": self.selection.describe(),
            "lora": self.lora,
            "scaling": self.scaling,
            "provenance": self.provenance,
        }
        return {key: value for key, value in recorded.items() if value is not None}


class Delta:
    """A weight update, tensor by tensor, that can be saved or grafted.

    `covers(name)` tells a missing tensor apart from an unchanged one: a full
    delta covers every tensor its selection admits (absent there means the
    models disagree, an error), a LoRA delta covers only its targets.
    """

    def __init__(
        self,
        kind: str,
        entries: dict[str, DeltaEntry],
        *,
        tied_embeddings: bool,
        sources: dict[str, Any],
        provenance: Provenance,
        checkpoints: list[Checkpoint],
        record: DeltaRecord,
    ):
        self.kind = kind
        self.entries = entries
        self.tied_embeddings = tied_embeddings
        self.sources = sources
        self.provenance = provenance  # the input files, hashed for manifests
        self.record = record
        self._checkpoints = checkpoints

    def covers(self, name: str) -> bool:
        if self.kind != "full":
            return False
        return self.record.selection.selects(name) and name not in self.record.omitted

    def close(self) -> None:
        for checkpoint in self._checkpoints:
            checkpoint.close()

    def __enter__(self) -> Delta:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ constructors

    @classmethod
    def from_models(
        cls,
        base: Path,
        tuned: Path,
        *,
        selection: Selection = Selection(),
        vocab_mismatch: str = "error",
        allow_pickle: bool = False,
    ) -> Delta:
        """The update W_tuned - W_base of every selected tensor both models have."""
        check_vocab_policy(vocab_mismatch)
        with contextlib.ExitStack() as opened:
            base_ckpt = opened.enter_context(Checkpoint(base, allow_pickle=allow_pickle))
            tuned_ckpt = opened.enter_context(Checkpoint(tuned, allow_pickle=allow_pickle))
            entries, omitted = _model_entries(base_ckpt, tuned_ckpt, selection, vocab_mismatch)
            tied = ties_embeddings(base_ckpt)
            opened.pop_all()  # the checkpoints stay open: the Delta reads them and closes them
        return cls(
            "full",
            entries,
            tied_embeddings=tied,
            sources={"base": str(base), "tuned": str(tuned)},
            provenance=Provenance({"base": checkpoint_inputs(base_ckpt), "tuned": checkpoint_inputs(tuned_ckpt)}),
            checkpoints=[base_ckpt, tuned_ckpt],
            record=DeltaRecord(selection, vocab_mismatch, omitted),
        )

    @classmethod
    def from_adapter(
        cls,
        base: Path,
        adapter: Path,
        *,
        selection: Selection = Selection(),
        vocab_mismatch: str = "error",
        allow_pickle: bool = False,
    ) -> Delta:
        """The update a PEFT LoRA adapter trained on `base` applies when merged.

        The base model maps adapter names onto checkpoint names and supplies
        the reference for fully saved modules (modules_to_save, trained biases).
        """
        check_vocab_policy(vocab_mismatch)
        config = read_adapter_config(Path(adapter))
        with contextlib.ExitStack() as opened:
            base_ckpt = opened.enter_context(Checkpoint(base, allow_pickle=allow_pickle))
            adapter_ckpt = opened.enter_context(Checkpoint(adapter, allow_pickle=allow_pickle))
            update = adapter_entries(config, base_ckpt, adapter_ckpt, selection, vocab_mismatch)
            tied = ties_embeddings(base_ckpt)
            opened.pop_all()  # the checkpoints stay open: the Delta reads them and closes them
        adapter_files = checkpoint_inputs(adapter_ckpt, extra=("adapter_config.json",))
        return cls(
            "lora",
            update.entries(),
            tied_embeddings=tied,
            sources={"base": str(base), "adapter": str(adapter)},
            provenance=Provenance({"base": checkpoint_inputs(base_ckpt), "adapter": adapter_files}),
            checkpoints=[base_ckpt, adapter_ckpt],
            record=DeltaRecord(
                selection,
                vocab_mismatch,
                update.omitted,
                lora={key: config.get(key) for key in LORA_CONFIG_KEYS},
                scaling=update.scaling,
            ),
        )

    @classmethod
    def load(cls, path: Path) -> Delta:
        """A delta directory written by `extract_delta` / `Delta.save`."""
        path = Path(path)
        manifest_path = path / DELTA_MANIFEST
        manifest = read_delta_manifest(path, manifest_path)
        with contextlib.ExitStack() as opened:
            checkpoint = opened.enter_context(Checkpoint(path))
            entries = {name: entry_from_manifest(name, spec, checkpoint) for name, spec in manifest["tensors"].items()}
            opened.pop_all()  # the Delta closes the checkpoint
        record = DeltaRecord(
            Selection.from_description(manifest["selection"]),
            manifest.get("vocab_mismatch", "error"),
            manifest.get("omitted", {}),
            lora=manifest.get("lora"),
            scaling=manifest.get("scaling"),
            provenance=manifest["inputs"],
        )
        files = (*checkpoint.files, manifest_path, *index_files(path))
        return cls(
            manifest["kind"],
            entries,
            tied_embeddings=manifest["tied_embeddings"],
            sources={"delta": str(path), **manifest["sources"]},
            provenance=Provenance({"delta": InputSet(path, files)}),
            checkpoints=[checkpoint],
            record=record,
        )

    # ------------------------------------------------------------------ saving

    def save(
        self,
        out: Path,
        *,
        dtype: str = "float32",
        max_shard_size: int | str = "5GB",
        threads: int | None = None,
        progress: bool = True,
        chunk_elements: int = CHUNK_ELEMENTS,
    ) -> dict[str, Any]:
        """Write this delta as a directory `Delta.load` reads back; returns its manifest.

        Dense updates are stored in `dtype` (float32 by default: the exact
        float32 difference, so grafting from the saved delta equals grafting
        from the models). LoRA factors are copied bit for bit. `chunk_elements`
        is the largest streamed block (see `check_chunk_elements`).
        """
        return self._save(Path(out), dtype_code(dtype), WriteOptions(max_shard_size, threads, progress, chunk_elements))

    def _save(self, out: Path, code: str, options: WriteOptions) -> dict[str, Any]:
        planned, specs = storage_plan(self.entries, code)
        chunk = options.chunk_elements

        def tasks(writer: SafetensorsWriter) -> Iterator[Callable[[Scratch], int]]:
            for tensor, source in planned:
                if isinstance(source, TensorInfo):
                    for byte0, byte1 in byte_ranges(source.nbytes, chunk * 8):
                        yield functools.partial(copy_bytes, source, byte0, byte1, writer, tensor.name)
                else:
                    fused = difference_part(tensor.dtype, source)
                    for block in blocks(0, source.rows, source.cols, chunk):
                        yield functools.partial(save_block, source, block, tensor, fused, writer)

        def finish(tmp: Path, writer: SafetensorsWriter, inputs: dict[str, Any]) -> dict[str, Any]:
            return self._manifest(code, inputs, specs, [*writer.file_names, *writer.index_names])

        plan = StreamPlan([t for t, _ in planned], tasks, "delta", "extract-delta", DELTA_MANIFEST, finish)
        return stream(out, plan, self.provenance, options)

    def _manifest(self, code: str, inputs: dict[str, Any], specs: dict[str, Any], files: list[str]) -> dict[str, Any]:
        record = self.record
        return {
            "format": DELTA_FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": self.kind,
            "dtype": torch_dtype_name(code),
            "tied_embeddings": self.tied_embeddings,
            "selection": record.selection.describe(),
            "vocab_mismatch": record.vocab_mismatch,
            "sources": self.sources,
            "inputs": inputs,
            **({"lora": record.lora, "scaling": record.scaling} if self.kind == "lora" else {}),
            "counts": {"tensors": len(specs), "omitted": len(record.omitted)},
            "omitted": record.omitted,
            "files": files,
            "versions": versions(),
            "tensors": specs,
        }


def _model_entries(
    base: Checkpoint, tuned: Checkpoint, selection: Selection, vocab_mismatch: str
) -> tuple[dict[str, DeltaEntry], dict[str, str]]:
    entries, omitted = {}, {}
    for name in dict.fromkeys([*base.tensors, *tuned.tensors]):
        if not selection.selects(name):
            continue
        if name not in base or name not in tuned:
            where, missing = ("tuned", "base") if name in tuned else ("base", "tuned")
            raise DeltaError(
                f"tensor {name!r} is in the {where} model but missing from the {missing} model ({tie_hint(name)})"
            )
        b, t = base[name], tuned[name]
        if not (b.is_float and t.is_float):
            omitted[name] = f"not floating point ({t.dtype})"
            continue
        rows = shared_rows(name, t.shape, b.shape, ("the tuned model", "the base model"), vocab_mismatch)
        if rows is None:
            omitted[name] = "vocabulary sizes differ (vocab_mismatch='keep')"
            continue
        entries[name] = DeltaEntry(name, (rows, *t.shape[1:]), (FullPart(t, b),))
    return entries, omitted


def tie_hint(name: str) -> str:
    if is_vocab_indexed(name):
        return "one model ties lm_head to the embeddings and the other does not? exclude the tensor to proceed"
    return "do the models share an architecture?"


# ----------------------------------------------------------------- extraction


@dataclass(frozen=True, kw_only=True)
class ExtractOptions(DeltaOptions):
    """How to extract: the storage dtype of dense updates, besides what grafting shares (`DeltaOptions`).

    float32, the default, stores the exact float32 difference. The fields are
    `extract_delta`'s keywords and the command line's options (``shadowft extract-delta --help``).
    """

    dtype: str = field(default="float32", metadata={"help": "storage dtype of dense updates; float32 is exact"})


def extract_delta(
    base: Path,
    out: Path,
    options: ExtractOptions | None = None,
    *,
    tuned: Path | None = None,
    adapter: Path | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Write the update of `tuned` (full fine-tuning) or `adapter` (LoRA) relative to `base` to `out`.

    `out` becomes a directory of ``delta*.safetensors`` (+ index when sharded)
    and ``manifest.json`` (kind, per-module LoRA scaling, sources with
    sha256, selection, dtype). Returns the manifest. The settings are an
    `ExtractOptions`, or its fields as keywords.
    """
    if (tuned is None) == (adapter is None):
        raise DeltaError("give exactly one of tuned (a fully fine-tuned model) or adapter (a LoRA adapter)")
    if options is not None and settings:
        raise TypeError("give either an ExtractOptions or its fields as keywords, not both")
    options = options if options is not None else ExtractOptions(**settings)
    opener = Delta.from_models if tuned is not None else Delta.from_adapter
    with opener(
        base,
        tuned if tuned is not None else adapter,
        selection=options.selection,
        vocab_mismatch=options.vocab_mismatch,
        allow_pickle=options.allow_pickle,
    ) as delta:
        return delta._save(Path(out), dtype_code(options.dtype), options.write)
