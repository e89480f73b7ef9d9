"""Extract a fine-tuning update and graft it onto another model (Shadow-FT).

    W_shadow = W_instruct + alpha * Delta

where Delta = W_tuned - W_base after full fine-tuning of the base, or
Delta = s * B @ A for a LoRA adapter trained on the base, with
s = lora_alpha / r (lora_alpha / sqrt(r) with rsLoRA).

A `Delta` is that update tensor by tensor, readable in row chunks: made from
two models (`Delta.from_models`), from a PEFT adapter (`Delta.from_adapter`),
or loaded from a directory written by `extract_delta` (`Delta.load`). Full and
LoRA deltas share one graft path: every chunk is computed in float32 (float64
when an input is float64) and rounded once, to nearest even, to the output
dtype. Inputs are validated completely before anything is written, and outputs
appear atomically, so an error or a killed run never leaves a usable-looking
output behind.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import platform
import re
import shutil
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shadowft.checkpoint import (
    CHUNK_ELEMENTS,
    BackgroundDigests,
    Block,
    Checkpoint,
    CheckpointError,
    OutputTensor,
    SafetensorsWriter,
    Scratch,
    TensorInfo,
    blocks,
    byte_ranges,
    check_chunk_elements,
    compute_dtype,
    copy_bytes,
    dtype_code,
    embedding_and_head,
    encode,
    is_output_head,
    is_vocab_indexed,
    itemsize,
    output_tensor,
    parse_size,
    progress_bar,
    read_float,
    run_tasks,
    ties_embeddings,
    torch_dtype_name,
)
from shadowft.io import atomic_directory, atomic_write_json

#: Which tensors a graft touches. "official" matches the official Shadow-FT
#: apply_diff.py: the attention and MLP projections only; embeddings, lm_head
#: and norms keep the instruct model's values.
PRESETS: dict[str, str | None] = {
    "all": None,
    "official": r"\.(?:q|k|v|o|gate|up|down)_proj\.(?:weight|bias)$",
}
#: What to do with embeddings / lm_head whose vocabulary sizes differ.
VOCAB_POLICIES = ("error", "shared", "keep")

DELTA_MANIFEST = "manifest.json"
GRAFT_MANIFEST = "shadowft_manifest.json"
DELTA_FORMAT = "shadowft-delta"
FORMAT_VERSION = 1

_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".gguf", ".onnx", ".pkl"}


class DeltaError(CheckpointError):
    """A delta cannot be built, saved or grafted as asked; the message names the tensor or key."""


# --------------------------------------------------------------------- policy


@dataclass(frozen=True)
class Selection:
    """Which tensors take part: a preset, then include / exclude regexes (re.search on the name)."""

    preset: str = "all"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise DeltaError(f"unknown preset {self.preset!r}: choose one of {', '.join(PRESETS)}")
        object.__setattr__(self, "include", tuple(self.include))
        object.__setattr__(self, "exclude", tuple(self.exclude))
        patterns = [PRESETS[self.preset] or "", *self.include, *self.exclude]
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise DeltaError(f"invalid regular expression {pattern!r}: {exc}") from None

    @functools.cached_property
    def _compiled(self) -> tuple[re.Pattern | None, list[re.Pattern], list[re.Pattern]]:
        preset = PRESETS[self.preset]
        return (re.compile(preset) if preset else None,
                [re.compile(p) for p in self.include], [re.compile(p) for p in self.exclude])

    def selects(self, name: str) -> bool:
        preset, include, exclude = self._compiled
        return ((preset is None or bool(preset.search(name)))
                and (not include or any(p.search(name) for p in include))
                and not any(p.search(name) for p in exclude))

    def describe(self) -> dict[str, Any]:
        return {"preset": self.preset, "preset_pattern": PRESETS[self.preset],
                "include": list(self.include), "exclude": list(self.exclude)}

    @classmethod
    def from_description(cls, description: dict[str, Any]) -> Selection:
        return cls(description["preset"], tuple(description["include"]), tuple(description["exclude"]))


def _check_vocab_policy(policy: str) -> None:
    if policy not in VOCAB_POLICIES:
        raise DeltaError(f"unknown vocab_mismatch policy {policy!r}: choose one of {', '.join(VOCAB_POLICIES)}")


def _shared_rows(name: str, shape: tuple[int, ...], other: tuple[int, ...], labels: tuple[str, str],
                 policy: str) -> int | None:
    """Leading rows two same-named tensors have in common, or None when the policy leaves it out.

    Only a vocabulary-indexed tensor (embeddings, lm_head) may differ, and only
    in its first dimension; anything else is an error naming the tensor.
    """
    if shape == other:
        return shape[0] if shape else 1
    if is_vocab_indexed(name) and len(shape) == len(other) >= 1 and shape[1:] == other[1:]:
        if policy == "shared":
            return min(shape[0], other[0])
        if policy == "keep":
            return None
        raise DeltaError(
            f"vocabulary size differs for {name!r}: {labels[0]} has shape {list(shape)}, "
            f"{labels[1]} has {list(other)}; choose vocab_mismatch='shared' (update the shared rows) "
            f"or 'keep' (leave the tensor out of the update)"
        )
    raise DeltaError(f"shape mismatch for {name!r}: {labels[0]} has shape {list(shape)}, "
                     f"{labels[1]} has {list(other)}")


# ----------------------------------------------------------------- delta parts


@dataclass(frozen=True, eq=False)
class FullPart:
    """A dense update: (minuend - subtrahend) * scale, each factor optional but the first."""

    minuend: TensorInfo
    subtrahend: TensorInfo | None = None
    scale: float | None = None

    @property
    def dtypes(self) -> tuple[str, ...]:
        return (self.minuend.dtype,) + ((self.subtrahend.dtype,) if self.subtrahend else ())

    def fill(self, block: Block, out: np.ndarray, scratch: Scratch) -> None:
        read_float(self.minuend, block.start, out, scratch)
        if self.subtrahend is not None:
            other = scratch.work(2, len(out), out.dtype)
            np.subtract(out, read_float(self.subtrahend, block.start, other, scratch), out=out)
        if self.scale is not None:
            np.multiply(out, out.dtype.type(self.scale), out=out)


@dataclass(frozen=True, eq=False)
class LoraPart:
    """A low-rank update s * B @ A, computed a block of rows at a time.

    `transposed` is PEFT's layout for embeddings and fan_in_fan_out (Conv1D)
    layers, whose update is (B @ A).T = A.T @ B.T: there A's columns index the
    rows of the update and B's rows index its columns.
    """

    a: TensorInfo
    b: TensorInfo
    scale: float
    transposed: bool = False

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the update this part produces."""
        if self.transposed:
            return (self.a.shape[1], self.b.shape[0])
        return (self.b.shape[0], self.a.shape[1])

    @property
    def dtypes(self) -> tuple[str, ...]:
        return (self.a.dtype, self.b.dtype)

    def fill(self, block: Block, out: np.ndarray, scratch: Scratch) -> None:
        dtype = out.dtype
        cached = scratch.cache.get("lora_columns")
        if cached is None or cached[0] is not self:
            cached = (self, self._column_factor(dtype, scratch))
            scratch.cache["lora_columns"] = cached
        columns = cached[1][:, block.col0 : block.col1]
        np.matmul(self._row_factor(block, dtype, scratch), columns, out=out.reshape(block.shape))
        np.multiply(out, dtype.type(self.scale), out=out)

    def _column_factor(self, dtype: np.dtype, scratch: Scratch) -> np.ndarray:
        """The [rank, cols] factor, whole (small: rank x one dimension of the weight)."""
        if self.transposed:
            stored = _read_float_array(self.b, dtype, scratch).reshape(self.b.shape)
            return np.ascontiguousarray(stored.T)
        return _read_float_array(self.a, dtype, scratch).reshape(self.a.shape)

    def _row_factor(self, block: Block, dtype: np.dtype, scratch: Scratch) -> np.ndarray:
        """Rows [row0, row1) of the [rows, rank] factor."""
        count, rank = block.row1 - block.row0, self.rank
        buffer = (scratch.work(2, count * rank, dtype) if count * rank <= scratch.chunk
                  else np.empty(count * rank, dtype))
        if not self.transposed:
            read_float(self.b, block.row0 * rank, buffer, scratch)
            return buffer.reshape(count, rank)
        length = self.a.shape[1]
        for k in range(rank):
            read_float(self.a, k * length + block.row0, buffer[k * count : (k + 1) * count], scratch)
        return buffer.reshape(rank, count).T


def _read_float_array(info: TensorInfo, dtype: np.dtype, scratch: Scratch) -> np.ndarray:
    out = np.empty(info.numel, dtype)
    for start in range(0, info.numel, scratch.chunk):
        read_float(info, start, out[start : start + scratch.chunk], scratch)
    return out


@dataclass(frozen=True, eq=False)
class DeltaEntry:
    """The update of one tensor: the sum of its parts over its first `shape[0]` rows."""

    name: str
    shape: tuple[int, ...]
    parts: tuple[FullPart | LoraPart, ...]

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(code for part in self.parts for code in part.dtypes)

    def fill(self, block: Block, out: np.ndarray, scratch: Scratch) -> None:
        self.parts[0].fill(block, out, scratch)
        for part in self.parts[1:]:
            extra = np.empty_like(out)
            part.fill(block, extra, scratch)
            np.add(out, extra, out=out)


# ---------------------------------------------------------------------- Delta


class Delta:
    """A weight update, tensor by tensor, that can be saved or grafted.

    `covers(name)` tells a missing tensor apart from an unchanged one: a full
    delta covers every tensor its selection admits (absent there means the
    models disagree, an error), a LoRA delta covers only its targets.
    """

    def __init__(self, kind: str, entries: dict[str, DeltaEntry], *, tied_embeddings: bool,
                 covered: Callable[[str], bool], sources: dict[str, Any], inputs: dict[str, tuple[Path, list[Path]]],
                 checkpoints: list[Checkpoint], details: dict[str, Any]):
        self.kind = kind
        self.entries = entries
        self.tied_embeddings = tied_embeddings
        self.sources = sources
        self.inputs = inputs  # role -> (root, files) to hash for manifests
        self.details = details  # recorded in manifests: selection, policies, LoRA config, omissions
        self._covered = covered
        self._checkpoints = checkpoints

    def covers(self, name: str) -> bool:
        return self._covered(name)

    def close(self) -> None:
        for checkpoint in self._checkpoints:
            checkpoint.close()

    def __enter__(self) -> Delta:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ constructors

    @classmethod
    def from_models(cls, base: Path, tuned: Path, *, selection: Selection = Selection(),
                    vocab_mismatch: str = "error", allow_pickle: bool = False) -> Delta:
        """The update W_tuned - W_base of every selected tensor both models have."""
        _check_vocab_policy(vocab_mismatch)
        with contextlib.ExitStack() as opened:
            base_ckpt = opened.enter_context(Checkpoint(base, allow_pickle=allow_pickle))
            tuned_ckpt = opened.enter_context(Checkpoint(tuned, allow_pickle=allow_pickle))
            entries, omitted = {}, {}
            for name in _union(base_ckpt.tensors, tuned_ckpt.tensors):
                if not selection.selects(name):
                    continue
                if name not in base_ckpt or name not in tuned_ckpt:
                    where, missing = ("tuned", "base") if name in tuned_ckpt else ("base", "tuned")
                    raise DeltaError(f"tensor {name!r} is in the {where} model but missing from the "
                                     f"{missing} model ({_tie_hint(name)})")
                b, t = base_ckpt[name], tuned_ckpt[name]
                if not (b.is_float and t.is_float):
                    omitted[name] = f"not floating point ({t.dtype})"
                    continue
                rows = _shared_rows(name, t.shape, b.shape, ("the tuned model", "the base model"), vocab_mismatch)
                if rows is None:
                    omitted[name] = "vocabulary sizes differ (vocab_mismatch='keep')"
                    continue
                entries[name] = DeltaEntry(name, (rows, *t.shape[1:]), (FullPart(t, b),))
            tied = ties_embeddings(base_ckpt)
            opened.pop_all()  # the checkpoints stay open: the Delta reads them and closes them
        return cls(
            "full", entries, tied_embeddings=tied,
            covered=lambda name: selection.selects(name) and name not in omitted,
            sources={"base": str(base), "tuned": str(tuned)},
            inputs={"base": _model_inputs(base_ckpt), "tuned": _model_inputs(tuned_ckpt)},
            checkpoints=[base_ckpt, tuned_ckpt],
            details={"selection": selection.describe(), "vocab_mismatch": vocab_mismatch, "omitted": omitted},
        )

    @classmethod
    def from_adapter(cls, base: Path, adapter: Path, *, selection: Selection = Selection(),
                     vocab_mismatch: str = "error", allow_pickle: bool = False) -> Delta:
        """The update a PEFT LoRA adapter trained on `base` applies when merged.

        The base model maps adapter names onto checkpoint names and supplies
        the reference for fully saved modules (modules_to_save, trained biases).
        """
        _check_vocab_policy(vocab_mismatch)
        config = _read_adapter_config(Path(adapter))
        with contextlib.ExitStack() as opened:
            base_ckpt = opened.enter_context(Checkpoint(base, allow_pickle=allow_pickle))
            adapter_ckpt = opened.enter_context(Checkpoint(adapter, allow_pickle=allow_pickle))
            entries, omitted, scaling = _adapter_entries(config, base_ckpt, adapter_ckpt, selection, vocab_mismatch)
            tied = ties_embeddings(base_ckpt)
            opened.pop_all()  # the checkpoints stay open: the Delta reads them and closes them
        lora_config = {key: config.get(key) for key in (
            "r", "lora_alpha", "use_rslora", "target_modules", "modules_to_save", "rank_pattern",
            "alpha_pattern", "fan_in_fan_out", "bias", "lora_bias", "peft_version")}
        adapter_files = _model_inputs(adapter_ckpt, extra=("adapter_config.json",))
        return cls(
            "lora", entries, tied_embeddings=tied, covered=lambda name: False,
            sources={"base": str(base), "adapter": str(adapter)},
            inputs={"base": _model_inputs(base_ckpt), "adapter": adapter_files},
            checkpoints=[base_ckpt, adapter_ckpt],
            details={"selection": selection.describe(), "vocab_mismatch": vocab_mismatch,
                     "omitted": omitted, "lora": lora_config, "scaling": scaling},
        )

    @classmethod
    def load(cls, path: Path) -> Delta:
        """A delta directory written by `extract_delta` / `Delta.save`."""
        path = Path(path)
        manifest_path = path / DELTA_MANIFEST
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise DeltaError(f"{path}: not a delta directory ({DELTA_MANIFEST} missing)") from None
        except json.JSONDecodeError as exc:
            raise DeltaError(f"{manifest_path}: invalid JSON ({exc})") from None
        if manifest.get("format") != DELTA_FORMAT or manifest.get("format_version") != FORMAT_VERSION:
            raise DeltaError(f"{manifest_path}: not a {DELTA_FORMAT} v{FORMAT_VERSION} manifest")
        with contextlib.ExitStack() as opened:
            checkpoint = opened.enter_context(Checkpoint(path))
            entries = {name: _entry_from_manifest(name, spec, checkpoint)
                       for name, spec in manifest["tensors"].items()}
            opened.pop_all()  # the Delta closes the checkpoint
        selection = Selection.from_description(manifest["selection"])
        omitted = manifest.get("omitted", {})
        covered = ((lambda name: selection.selects(name) and name not in omitted)
                   if manifest["kind"] == "full" else (lambda name: False))
        return cls(
            manifest["kind"], entries, tied_embeddings=manifest["tied_embeddings"], covered=covered,
            sources={"delta": str(path), **manifest["sources"]},
            inputs={"delta": (path, [*checkpoint.files, manifest_path, *_index_files(path)])},
            checkpoints=[checkpoint],
            details={"provenance": manifest["inputs"],
                     **{key: manifest[key] for key in ("selection", "vocab_mismatch", "omitted", "lora", "scaling")
                        if key in manifest}},
        )

    # ------------------------------------------------------------------ saving

    def save(self, out: Path, *, dtype: str = "float32", max_shard_size: int | str = "5GB",
             threads: int | None = None, progress: bool = True,
             chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, Any]:
        """Write this delta as a directory `Delta.load` reads back; returns its manifest.

        Dense updates are stored in `dtype` (float32 by default: the exact
        float32 difference, so grafting from the saved delta equals grafting
        from the models). LoRA factors are copied bit for bit. `chunk_elements`
        is the largest streamed block (see `check_chunk_elements`).
        """
        code = dtype_code(dtype)
        chunk = check_chunk_elements(chunk_elements)
        _refuse_overwriting_inputs(Path(out), [root for root, _ in self.inputs.values()])
        digests = BackgroundDigests(f for _, files in self.inputs.values() for f in files)
        planned: list[tuple[OutputTensor, TensorInfo | DeltaEntry]] = []
        specs: dict[str, dict[str, Any]] = {}
        for name, entry in self.entries.items():
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
                    parts.append({"form": "lora", "A": a_key, "B": b_key, "rank": part.rank,
                                  "scale": part.scale, "layout": "transposed" if part.transposed else "standard"})
            specs[name] = {"shape": list(entry.shape), "parts": parts}

        def tasks(writer: SafetensorsWriter) -> Iterator[Callable[[Scratch], int]]:
            for tensor, source in planned:
                if isinstance(source, TensorInfo):
                    for byte0, byte1 in byte_ranges(source.nbytes, chunk * 8):
                        yield functools.partial(copy_bytes, source, byte0, byte1, writer, tensor.name)
                else:
                    for block in blocks(0, source.rows, math.prod(source.shape[1:]), chunk):
                        yield functools.partial(_save_block, source, block, tensor, writer)

        try:
            with atomic_directory(Path(out)) as tmp:
                writer = SafetensorsWriter(tmp, [t for t, _ in planned], prefix="delta",
                                           max_shard_bytes=parse_size(max_shard_size))
                with writer, progress_bar(writer.total_bytes, "extract-delta", progress) as bar:
                    run_tasks(tasks(writer), threads=threads, on_result=bar.update, chunk_elements=chunk)
                manifest = {
                    "format": DELTA_FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
                    "dtype": torch_dtype_name(code),
                    "tied_embeddings": self.tied_embeddings,
                    **{key: self.details[key] for key in ("selection", "vocab_mismatch")},
                    "sources": self.sources,
                    "inputs": {role: {"path": str(root), "files": digests.describe(root, files)}
                               for role, (root, files) in self.inputs.items()},
                    **({"lora": self.details["lora"], "scaling": self.details["scaling"]}
                       if self.kind == "lora" else {}),
                    "counts": {"tensors": len(specs), "omitted": len(self.details.get("omitted", {}))},
                    "omitted": self.details.get("omitted", {}),
                    "files": [*writer.file_names, *writer.index_names],
                    "versions": _versions(),
                    "tensors": specs,
                }
                atomic_write_json(tmp / DELTA_MANIFEST, manifest)
        finally:
            digests.cancel()
        return manifest


def _save_block(dense: DeltaEntry, block: Block, tensor: OutputTensor, writer: SafetensorsWriter,
                scratch: Scratch) -> int:
    values = scratch.work(1, block.count, compute_dtype(*dense.dtypes))
    dense.fill(block, values, scratch)
    data = encode(values, tensor.dtype, scratch)
    writer.write(tensor.name, block.start * itemsize(tensor.dtype), data)
    return len(data)


def _entry_from_manifest(name: str, spec: dict[str, Any], checkpoint: Checkpoint) -> DeltaEntry:
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
                raise DeltaError(f"{checkpoint.path}: {name!r} is stored with shape {list(stored.shape)}, "
                                 f"manifest says {list(shape)}")
            parts.append(FullPart(stored))
        elif part["form"] == "lora":
            lora = LoraPart(tensor(part["A"]), tensor(part["B"]), float(part["scale"]),
                            part["layout"] == "transposed")
            if lora.shape != shape or len(lora.b.shape) != 2 or lora.b.shape[1] != lora.rank:
                raise DeltaError(f"{checkpoint.path}: LoRA factors of {name!r} do not make shape {list(shape)}")
            parts.append(lora)
        else:
            raise DeltaError(f"{checkpoint.path}: unknown part form {part['form']!r} for {name!r}")
    return DeltaEntry(name, shape, tuple(parts))


# ---------------------------------------------------------------- PEFT adapters

# Adapter settings whose merged result is not W + s * B @ A (or that PEFT
# cannot merge at all): refused rather than approximated.
_UNSUPPORTED_ADAPTER_KEYS = {
    "use_dora": "DoRA rescales each column by a learned magnitude",
    "use_qalora": "QALoRA pools inputs by group",
    "alora_invocation_tokens": "activated LoRA only applies after its invocation tokens",
    "layer_replication": "layer replication adds layers the base does not have",
    "trainable_token_indices": "trainable tokens are stored as sparse token updates",
    "target_parameters": "LoRA on bare parameters (e.g. MoE experts) is not supported",
    "megatron_config": "Megatron-parallel LoRA layers are not supported",
    "arrow_config": "Arrow routes between several adapters at run time",
}
_BASE_ALTERING_INITS = ("pissa", "olora", "corda", "loftq")

_PEFT_PREFIX = "base_model.model."
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?:(?P<linear>lora_[AB])\.(?P<param>weight|bias)|(?P<embedding>lora_embedding_[AB]))$"
)


def _read_adapter_config(adapter: Path) -> dict[str, Any]:
    config_path = adapter / "adapter_config.json"
    if not config_path.is_file():
        raise DeltaError(f"{adapter}: not a PEFT adapter (adapter_config.json missing)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise DeltaError(f"{config_path}: invalid JSON ({exc})") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise DeltaError(f"{config_path}: peft_type is {config['peft_type']!r}; only LORA adapters are supported")
    for key, reason in _UNSUPPORTED_ADAPTER_KEYS.items():
        if config.get(key):
            raise DeltaError(f"{config_path}: {key}={config[key]!r} is not supported ({reason}); "
                             f"its update is not (lora_alpha/r) * B @ A")
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_ALTERING_INITS):
        raise DeltaError(f"{config_path}: init_lora_weights={init!r} modifies the base weights, so the adapter "
                         f"alone does not describe the update (convert it with PEFT's "
                         f"path_initial_model_for_weight_conversion first)")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)) or config[key] <= 0:
            raise DeltaError(f"{config_path}: {key} must be a positive number, got {config.get(key)!r}")
    return config


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup (peft.utils.other.get_pattern_key)."""
    for pattern in patterns or {}:
        if re.match(rf"(.*\.)?({pattern})$", module):
            return patterns[pattern]
    return default


class _NameResolver:
    """Maps adapter-side tensor names onto checkpoint names.

    PEFT names follow the module tree of the model class it wrapped
    (``model.layers.0...`` for a CausalLM); checkpoints usually agree but may
    carry a different prefix (``language_model.``, no ``model.``). An exact
    match wins; otherwise a unique match on whole dotted components.
    """

    def __init__(self, names: Iterable[str], where: str):
        self._names = list(names)
        self._set = set(self._names)
        self._where = where

    def __call__(self, name: str, key: str) -> str:
        if name in self._set:
            return name
        matches = [n for n in self._names if n.endswith("." + name) or name.endswith("." + n)]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise DeltaError(f"adapter tensor {key!r} targets {name!r}, which is not in {self._where}")
        raise DeltaError(f"adapter tensor {key!r} targets {name!r}, ambiguous in {self._where}: "
                         f"{', '.join(sorted(matches)[:4])}")


def _adapter_entries(config: dict[str, Any], base: Checkpoint, adapter: Checkpoint, selection: Selection,
                     vocab_mismatch: str) -> tuple[dict[str, DeltaEntry], dict[str, str], dict[str, float]]:
    resolve = _NameResolver(base.tensors, f"the base model {base.path}")
    factors: dict[str, dict[str, TensorInfo]] = {}
    replaced: list[tuple[str, str, TensorInfo]] = []  # (checkpoint-side name, adapter key, saved tensor)
    for key, info in adapter.tensors.items():
        local = key.removeprefix(_PEFT_PREFIX)
        if "lora_magnitude_vector" in local:
            raise DeltaError(f"{adapter.path}: {key!r} is a DoRA magnitude; DoRA adapters are not supported")
        if "trainable_tokens" in local:
            raise DeltaError(f"{adapter.path}: {key!r} holds trainable tokens, which are not supported")
        match = _LORA_KEY.match(local)
        if match:
            role = match["embedding"] or (match["linear"] if match["param"] == "weight" else "lora_B.bias")
            factors.setdefault(match["module"], {})[role] = info
        elif ".lora_" in local:
            raise DeltaError(f"{adapter.path}: unrecognised LoRA tensor {key!r}")
        else:
            # modules_to_save, trained biases and saved embedding base layers replace the base tensor
            replaced.append((local.replace(".base_layer.", "."), key, info))

    entries: dict[str, list[FullPart | LoraPart]] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    omitted: dict[str, str] = {}
    scaling: dict[str, float] = {}
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    for module, found in factors.items():
        embedding = "lora_embedding_A" in found or "lora_embedding_B" in found
        a_role, b_role = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
        if a_role not in found or b_role not in found:
            missing = a_role if a_role not in found else b_role
            raise DeltaError(f"{adapter.path}: module {module!r} has no {missing} tensor")
        a, b = found[a_role], found[b_role]
        target = resolve(f"{module}.weight", a.name)
        if not selection.selects(target):
            omitted[target] = "not selected"
            continue
        rank = a.shape[0] if a.shape else 0
        expected_rank = _pattern_value(config.get("rank_pattern"), module, config["r"])
        if len(a.shape) != 2 or len(b.shape) != 2 or b.shape[1] != rank:
            raise DeltaError(f"{adapter.path}: LoRA factors of {module!r} have shapes {list(a.shape)} and "
                             f"{list(b.shape)}; expected [r, in] and [out, r]")
        if rank != expected_rank:
            raise DeltaError(f"{adapter.path}: module {module!r} has rank {rank} but adapter_config.json "
                             f"gives r={expected_rank} (r / rank_pattern)")
        lora_alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
        scale = lora_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
        part = LoraPart(a, b, scale, transposed=embedding or fan_in_fan_out)
        if tuple(base[target].shape) != part.shape:
            raise DeltaError(f"shape mismatch for {target!r}: the base model has {list(base[target].shape)}, "
                             f"the adapter's B @ A makes {list(part.shape)}")
        if not base[target].is_float:
            raise DeltaError(f"cannot apply LoRA to {target!r}: it is {base[target].dtype}, not floating point")
        entries.setdefault(target, []).append(part)
        shapes[target] = part.shape
        scaling[target] = scale
        if "lora_B.bias" in found:  # lora_bias=True: PEFT adds s * lora_B.bias to the layer's bias
            bias_target = resolve(f"{module}.bias", found["lora_B.bias"].name)
            if selection.selects(bias_target):
                entries.setdefault(bias_target, []).append(FullPart(found["lora_B.bias"], scale=scale))
                shapes[bias_target] = tuple(base[bias_target].shape)

    for local, key, saved in replaced:
        target = resolve(local, key)
        if not selection.selects(target):
            omitted[target] = "not selected"
            continue
        reference = base[target]
        if not (saved.is_float and reference.is_float):
            raise DeltaError(f"adapter tensor {key!r} replaces {target!r}, which is not floating point")
        rows = _shared_rows(target, saved.shape, reference.shape, ("the adapter", "the base model"), vocab_mismatch)
        if rows is None:
            omitted[target] = "vocabulary sizes differ (vocab_mismatch='keep')"
            continue
        if ".base_layer." in key and _same_bytes(saved, reference):
            continue  # PEFT saved the untouched embedding beside its LoRA factors
        if target in shapes and shapes[target][0] != rows:
            raise DeltaError(f"{target!r}: the adapter's saved tensor and its LoRA factors cover different rows")
        entries.setdefault(target, []).insert(0, FullPart(saved, reference))
        shapes[target] = (rows, *reference.shape[1:])
    return ({name: DeltaEntry(name, shapes[name], tuple(parts)) for name, parts in entries.items()},
            omitted, scaling)


def _same_bytes(a: TensorInfo, b: TensorInfo) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    for byte0, byte1 in byte_ranges(a.nbytes):
        with a.window(byte0, byte1 - byte0) as first, b.window(byte0, byte1 - byte0) as second:
            if first != second:
                return False
    return True


# ----------------------------------------------------------------- extraction


def extract_delta(base: Path, out: Path, *, tuned: Path | None = None, adapter: Path | None = None,
                  preset: str = "all", include: Iterable[str] = (), exclude: Iterable[str] = (),
                  vocab_mismatch: str = "error", dtype: str = "float32", max_shard_size: int | str = "5GB",
                  allow_pickle: bool = False, threads: int | None = None, progress: bool = True,
                  chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, Any]:
    """Write the update of `tuned` (full fine-tuning) or `adapter` (LoRA) relative to `base` to `out`.

    `out` becomes a directory of ``delta*.safetensors`` (+ index when sharded)
    and ``manifest.json`` (kind, per-module LoRA scaling, sources with
    sha256, selection, dtype). Returns the manifest. `chunk_elements` is the
    largest streamed block (see `shadowft.checkpoint.check_chunk_elements`).
    """
    if (tuned is None) == (adapter is None):
        raise DeltaError("give exactly one of tuned (a fully fine-tuned model) or adapter (a LoRA adapter)")
    selection = Selection(preset, tuple(include), tuple(exclude))
    opener = Delta.from_models if tuned is not None else Delta.from_adapter
    with opener(base, tuned if tuned is not None else adapter, selection=selection,
                vocab_mismatch=vocab_mismatch, allow_pickle=allow_pickle) as delta:
        return delta.save(out, dtype=dtype, max_shard_size=max_shard_size, threads=threads, progress=progress,
                          chunk_elements=chunk_elements)


# ---------------------------------------------------------------------- graft


@dataclass(frozen=True, eq=False)
class _Planned:
    """How one output tensor is made: instruct's tensor, plus an update over its first rows."""

    name: str
    source: TensorInfo
    out_dtype: str
    entry: DeltaEntry | None
    graft_rows: int
    note: str


def graft(instruct: Path, delta: Path | Delta, out: Path, *, alpha: float = 1.0, preset: str = "all",
          include: Iterable[str] = (), exclude: Iterable[str] = (), vocab_mismatch: str = "error",
          dtype: str | None = None, max_shard_size: int | str = "5GB", allow_pickle: bool = False,
          threads: int | None = None, progress: bool = True, chunk_elements: int = CHUNK_ELEMENTS) -> dict[str, Any]:
    """Write W_instruct + alpha * Delta to `out` as a model transformers loads; returns the manifest.

    `delta` is a directory from `extract_delta` or a `Delta` (e.g. from
    `Delta.from_models(base, tuned)`, which grafts without storing the delta).
    Tensors outside the selection keep instruct's values. `dtype` overrides
    the output dtype of floating-point tensors (default: instruct's, per
    tensor). Config, tokenizer and generation files come from `instruct`;
    ``shadowft_manifest.json`` records inputs (sha256), alpha, policy,
    per-tensor actions and versions. `chunk_elements` is the largest streamed
    block (see `shadowft.checkpoint.check_chunk_elements`).
    """
    _check_vocab_policy(vocab_mismatch)
    if not math.isfinite(alpha):
        raise DeltaError(f"alpha must be a finite number, got {alpha!r}")
    chunk = check_chunk_elements(chunk_elements)
    selection = Selection(preset, tuple(include), tuple(exclude))
    out_code = dtype_code(dtype) if dtype is not None else None
    opened = Delta.load(delta) if not isinstance(delta, Delta) else None
    try:
        with Checkpoint(instruct, allow_pickle=allow_pickle) as instruct_ckpt:
            return _graft(instruct_ckpt, opened or delta, Path(out), alpha=alpha, selection=selection,
                          vocab_mismatch=vocab_mismatch, out_code=out_code,
                          max_shard_bytes=parse_size(max_shard_size), threads=threads, progress=progress,
                          chunk=chunk)
    finally:
        if opened is not None:
            opened.close()


def _graft(instruct: Checkpoint, delta: Delta, out: Path, *, alpha: float, selection: Selection,
           vocab_mismatch: str, out_code: str | None, max_shard_bytes: int, threads: int | None,
           progress: bool, chunk: int) -> dict[str, Any]:
    plan = _plan_graft(instruct, delta, alpha=alpha, selection=selection,
                       vocab_mismatch=vocab_mismatch, out_code=out_code)
    model_files = _model_files(instruct.path) if instruct.path.is_dir() else []
    inputs = {"instruct": (instruct.path, [*instruct.files, *_index_files(instruct.path), *model_files]),
              **delta.inputs}
    _refuse_overwriting_inputs(out, [root for root, _ in inputs.values()])
    digests = BackgroundDigests(f for _, files in inputs.values() for f in files)
    update_scale = None if alpha == 1 else alpha  # multiplying by 1 is exact: skip the pass

    def tasks(writer: SafetensorsWriter) -> Iterator[Callable[[Scratch], int]]:
        for item in plan:
            source, cols = item.source, item.source.cols
            if item.entry is not None:
                for block in blocks(0, item.graft_rows, cols, chunk):
                    yield functools.partial(_graft_block, item, block, update_scale, writer)
            kept_from_row = item.graft_rows if item.entry is not None else 0
            if item.out_dtype == source.dtype:
                offset = kept_from_row * cols * source.itemsize
                for byte0, byte1 in byte_ranges(source.nbytes - offset, chunk * 8):
                    yield functools.partial(copy_bytes, source, offset + byte0, offset + byte1, writer, item.name)
            else:
                for block in blocks(kept_from_row, source.rows, cols, chunk):
                    yield functools.partial(_graft_block, item, block, None, writer)

    try:
        with atomic_directory(out) as tmp:
            writer = SafetensorsWriter(tmp, [_output_of(item) for item in plan], prefix="model",
                                       max_shard_bytes=max_shard_bytes)
            with writer, progress_bar(writer.total_bytes, "graft", progress) as bar:
                run_tasks(tasks(writer), threads=threads, on_result=bar.update, chunk_elements=chunk)
            for file in model_files:
                shutil.copyfile(file, tmp / file.name)
            if out_code is not None and (tmp / "config.json").is_file():
                _set_config_dtype(tmp / "config.json", out_code)
            actions = Counter(item.note.split(":")[0] for item in plan)
            manifest = {
                "format": "shadowft-graft", "format_version": FORMAT_VERSION,
                "formula": "W_instruct + alpha * Delta",
                "alpha": alpha,
                "policy": {**selection.describe(), "vocab_mismatch": vocab_mismatch,
                           "dtype": torch_dtype_name(out_code) if out_code else "instruct's, per tensor",
                           "arithmetic": "float32 (float64 for float64 inputs), one rounding to nearest even"},
                "tied_embeddings": {"instruct": ties_embeddings(instruct), "delta": delta.tied_embeddings},
                "delta": {"kind": delta.kind, "sources": delta.sources,
                          **{key: value for key, value in delta.details.items()
                             if key in ("selection", "lora", "scaling", "provenance")}},
                "inputs": {role: {"path": str(root), "files": digests.describe(root, files)}
                           for role, (root, files) in inputs.items()},
                "counts": {"tensors": len(plan), "grafted": actions["grafted"], "kept": actions["kept"],
                           "partially_grafted": actions["partially grafted"]},
                "tensors": {item.name: item.note for item in plan},
                "files": [*writer.file_names, *writer.index_names, *(f.name for f in model_files)],
                "versions": _versions(),
            }
            atomic_write_json(tmp / GRAFT_MANIFEST, manifest)
    finally:
        digests.cancel()
    return manifest


def _plan_graft(instruct: Checkpoint, delta: Delta, *, alpha: float, selection: Selection,
                vocab_mismatch: str, out_code: str | None) -> list[_Planned]:
    """Decide every output tensor before writing anything; raise on the first inconsistency."""
    instruct_tied = ties_embeddings(instruct)
    embedding, head = embedding_and_head(instruct.tensors)
    plan = []
    for name, source in instruct.tensors.items():
        out_dtype = out_code if out_code is not None and source.is_float else source.dtype
        entry, note = delta.entries.get(name), "grafted"
        if alpha == 0:
            entry, note = None, "kept: alpha is 0"
        elif not selection.selects(name):
            entry, note = None, "kept: not selected"
        elif entry is None and name == head and not instruct_tied and delta.tied_embeddings \
                and embedding in delta.entries:
            entry, note = delta.entries[embedding], f"grafted: update of the tied {embedding}"
        elif entry is None and delta.covers(name):
            raise DeltaError(f"tensor {name!r} is in the instruct model but missing from the delta "
                             f"({_tie_hint(name)})")
        elif entry is None:
            note = "kept: no update in the delta"
        rows = 0
        if entry is not None:
            if not source.is_float:
                raise DeltaError(f"cannot graft {name!r}: instruct stores it as {source.dtype}, not floating point")
            rows = _shared_rows(name, source.shape, entry.shape, ("the instruct model", "the delta"),
                                vocab_mismatch)
            if rows is None:
                entry, note = None, "kept: vocabulary sizes differ (vocab_mismatch='keep')"
            elif rows < source.rows:
                note = f"partially grafted: rows [0, {rows}) of {source.rows} (vocab_mismatch='shared')"
        arithmetic = compute_dtype(source.dtype, *(entry.dtypes if entry else ()))
        if out_dtype == "BF16" and arithmetic == np.float64 and (entry is not None or source.dtype != "BF16"):
            raise DeltaError(f"{name!r}: float64 arithmetic rounded to bfloat16 would round twice; "
                             f"choose dtype float32 or float64")
        plan.append(_Planned(name, source, out_dtype, entry, rows, note))

    if alpha != 0:
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
    return plan


def _graft_block(item: _Planned, block: Block, alpha: float | None, writer: SafetensorsWriter,
                 scratch: Scratch) -> int:
    entry = item.entry if block.row1 <= item.graft_rows else None
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


def _output_of(item: _Planned) -> OutputTensor:
    if item.out_dtype == item.source.dtype:
        return OutputTensor(item.name, item.source.dtype, item.source.shape, item.source.nbytes)
    return output_tensor(item.name, item.out_dtype, item.source.shape)


# ------------------------------------------------------------------- helpers


def _refuse_overwriting_inputs(out: Path, inputs: Iterable[Path]) -> None:
    # the output replaces `out` at the end: it must not be, or hold, an input
    target = out.resolve()
    for root in inputs:
        if target == root.resolve() or target in root.resolve().parents:
            raise DeltaError(f"output {out} would replace the input {root}; choose another output path")


def _union(first: Iterable[str], second: Iterable[str]) -> list[str]:
    return list(dict.fromkeys([*first, *second]))


def _tie_hint(name: str) -> str:
    if is_vocab_indexed(name):
        return ("one model ties lm_head to the embeddings and the other does not? exclude the tensor "
                "to proceed")
    return "do the models share an architecture?"


def _index_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.index.json")) if directory.is_dir() else []


def _model_files(directory: Path) -> list[Path]:
    """Top-level files of a model folder other than weights: config, tokenizer, generation config, code, license."""
    return sorted(
        path for path in directory.iterdir()
        if path.is_file() and not path.name.startswith(".") and path.suffix not in _WEIGHT_SUFFIXES
        and not path.name.endswith(".index.json") and path.name not in (GRAFT_MANIFEST, DELTA_MANIFEST)
    )


def _model_inputs(checkpoint: Checkpoint, extra: Iterable[str] = ("config.json",)) -> tuple[Path, list[Path]]:
    root = checkpoint.path if checkpoint.path.is_dir() else checkpoint.path.parent
    files = [*checkpoint.files, *_index_files(checkpoint.path)]
    files += [root / name for name in extra if (root / name).is_file()]
    return root, files


def _set_config_dtype(config_path: Path, code: str) -> None:
    config = json.loads(config_path.read_text())
    keys = [key for key in ("torch_dtype", "dtype") if key in config] or ["torch_dtype"]
    for key in keys:
        config[key] = torch_dtype_name(code)
    atomic_write_json(config_path, config)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        shadowft_version = version("shadowft")
    except PackageNotFoundError:
        shadowft_version = "unknown"
    return {"shadowft": shadowft_version, "python": platform.python_version(), "numpy": np.__version__}
