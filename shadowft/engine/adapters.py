"""PEFT LoRA adapters as deltas: the update s * B @ A (plus saved modules) they apply when merged.

Settings whose merged result is not W + s * B @ A, or that PEFT cannot merge,
are refused rather than approximated. Adapter keys name modules of the model
class PEFT wrapped; `NameResolver` maps them onto the base checkpoint's names.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shadowft.engine.layout import PEFT_PREFIX, RUNTIME_CHECKPOINT_PREFIXES, DeltaError, shared_rows
from shadowft.engine.numerics import byte_ranges
from shadowft.engine.parts import DeltaEntry, FullPart, LoraPart
from shadowft.engine.policy import Selection
from shadowft.engine.reader import Checkpoint
from shadowft.engine.tensors import TensorInfo

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
#: adapter_config.json keys a delta's manifest records.
LORA_CONFIG_KEYS = (
    "r",
    "lora_alpha",
    "use_rslora",
    "target_modules",
    "modules_to_save",
    "rank_pattern",
    "alpha_pattern",
    "fan_in_fan_out",
    "bias",
    "lora_bias",
    "peft_version",
)
_LORA_KEY = re.compile(
    r"^(?P<module>.+)\.(?:(?P<linear>lora_[AB])\.(?P<param>weight|bias)|(?P<embedding>lora_embedding_[AB]))$"
)


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    """adapter_config.json of a PEFT LoRA adapter, refused when its update is not (lora_alpha/r) * B @ A."""
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
            raise DeltaError(
                f"{config_path}: {key}={config[key]!r} is not supported ({reason}); "
                f"its update is not (lora_alpha/r) * B @ A"
            )
    init = config.get("init_lora_weights")
    if isinstance(init, str) and init.lower().startswith(_BASE_ALTERING_INITS):
        raise DeltaError(
            f"{config_path}: init_lora_weights={init!r} modifies the base weights, so the adapter "
            f"alone does not describe the update (convert it with PEFT's "
            f"path_initial_model_for_weight_conversion first)"
        )
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


class NameResolver:
    """Maps adapter-side tensor names onto checkpoint names.

    PEFT names follow the module tree of the model class it wrapped
    (``model.layers.0...`` for a CausalLM); checkpoints usually agree but may
    carry a different prefix (``language_model.``, no ``model.``), or a multimodal
    wrapper's on-disk layout (``layout.RUNTIME_CHECKPOINT_PREFIXES``). An exact match
    wins; otherwise a unique match on whole dotted components; otherwise the same
    for the name in the wrapper's on-disk layout.
    """

    def __init__(self, names: Iterable[str], where: str):
        self._names = list(names)
        self._set = set(self._names)
        self._where = where

    def __call__(self, name: str, key: str) -> str:
        candidates = [name] + [
            checkpoint + name.removeprefix(runtime)
            for runtime, checkpoint in RUNTIME_CHECKPOINT_PREFIXES
            if name.startswith(runtime)
        ]
        for candidate in candidates:
            if candidate in self._set:
                return candidate
        for candidate in candidates:
            matches = [n for n in self._names if n.endswith("." + candidate) or candidate.endswith("." + n)]
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise DeltaError(
                    f"adapter tensor {key!r} targets {name!r}, ambiguous in {self._where}: "
                    f"{', '.join(sorted(matches)[:4])}"
                )
        raise DeltaError(f"adapter tensor {key!r} targets {name!r}, which is not in {self._where}")


@dataclass
class AdapterUpdate:
    """What an adapter changes, gathered tensor by tensor (checkpoint-side names)."""

    parts: dict[str, list[FullPart | LoraPart]] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    omitted: dict[str, str] = field(default_factory=dict)
    scaling: dict[str, float] = field(default_factory=dict)

    def entries(self) -> dict[str, DeltaEntry]:
        return {name: DeltaEntry(name, self.shapes[name], tuple(parts)) for name, parts in self.parts.items()}


def adapter_entries(
    config: dict[str, Any], base: Checkpoint, adapter: Checkpoint, selection: Selection, vocab_mismatch: str
) -> AdapterUpdate:
    """The update of every selected tensor the adapter changes, checked against the base model."""
    resolve = NameResolver(base.tensors, f"the base model {base.path}")
    factors, replaced = _split_adapter_tensors(adapter)
    update = AdapterUpdate()
    for module, found in factors.items():
        _add_lora_module(update, module, found, config, base, adapter, selection, resolve)
    for local, key, saved in replaced:
        _add_saved_tensor(update, local, key, saved, base, selection, vocab_mismatch, resolve)
    return update


def _split_adapter_tensors(
    adapter: Checkpoint,
) -> tuple[dict[str, dict[str, TensorInfo]], list[tuple[str, str, TensorInfo]]]:
    """LoRA factors by module, and the saved tensors that replace a base tensor (checkpoint name, key, tensor)."""
    factors: dict[str, dict[str, TensorInfo]] = {}
    replaced: list[tuple[str, str, TensorInfo]] = []
    for key, info in adapter.tensors.items():
        local = key.removeprefix(PEFT_PREFIX)
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
    return factors, replaced


def _add_lora_module(
    update: AdapterUpdate,
    module: str,
    found: dict[str, TensorInfo],
    config: dict[str, Any],
    base: Checkpoint,
    adapter: Checkpoint,
    selection: Selection,
    resolve: NameResolver,
) -> None:
    embedding = "lora_embedding_A" in found or "lora_embedding_B" in found
    a_role, b_role = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
    if a_role not in found or b_role not in found:
        missing = a_role if a_role not in found else b_role
        raise DeltaError(f"{adapter.path}: module {module!r} has no {missing} tensor")
    a, b = found[a_role], found[b_role]
    target = resolve(f"{module}.weight", a.name)
    if not selection.selects(target):
        update.omitted[target] = "not selected"
        return
    rank = a.shape[0] if a.shape else 0
    expected_rank = _pattern_value(config.get("rank_pattern"), module, config["r"])
    if len(a.shape) != 2 or len(b.shape) != 2 or b.shape[1] != rank:
        raise DeltaError(
            f"{adapter.path}: LoRA factors of {module!r} have shapes {list(a.shape)} and "
            f"{list(b.shape)}; expected [r, in] and [out, r]"
        )
    if rank != expected_rank:
        raise DeltaError(
            f"{adapter.path}: module {module!r} has rank {rank} but adapter_config.json "
            f"gives r={expected_rank} (r / rank_pattern)"
        )
    lora_alpha = _pattern_value(config.get("alpha_pattern"), module, config["lora_alpha"])
    scale = lora_alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)
    part = LoraPart(a, b, scale, transposed=embedding or bool(config.get("fan_in_fan_out")))
    if tuple(base[target].shape) != part.shape:
        raise DeltaError(
            f"shape mismatch for {target!r}: the base model has {list(base[target].shape)}, "
            f"the adapter's B @ A makes {list(part.shape)}"
        )
    if not base[target].is_float:
        raise DeltaError(f"cannot apply LoRA to {target!r}: it is {base[target].dtype}, not floating point")
    update.parts.setdefault(target, []).append(part)
    update.shapes[target] = part.shape
    update.scaling[target] = scale
    if "lora_B.bias" in found:  # lora_bias=True: PEFT adds s * lora_B.bias to the layer's bias
        bias_target = resolve(f"{module}.bias", found["lora_B.bias"].name)
        if selection.selects(bias_target):
            update.parts.setdefault(bias_target, []).append(FullPart(found["lora_B.bias"], scale=scale))
            update.shapes[bias_target] = tuple(base[bias_target].shape)


def _add_saved_tensor(
    update: AdapterUpdate,
    local: str,
    key: str,
    saved: TensorInfo,
    base: Checkpoint,
    selection: Selection,
    vocab_mismatch: str,
    resolve: NameResolver,
) -> None:
    target = resolve(local, key)
    if not selection.selects(target):
        update.omitted[target] = "not selected"
        return
    reference = base[target]
    if not (saved.is_float and reference.is_float):
        raise DeltaError(f"adapter tensor {key!r} replaces {target!r}, which is not floating point")
    rows = shared_rows(target, saved.shape, reference.shape, ("the adapter", "the base model"), vocab_mismatch)
    if rows is None:
        update.omitted[target] = "vocabulary sizes differ (vocab_mismatch='keep')"
        return
    if ".base_layer." in key and _same_bytes(saved, reference):
        return  # PEFT saved the untouched embedding beside its LoRA factors
    if target in update.shapes and update.shapes[target][0] != rows:
        raise DeltaError(f"{target!r}: the adapter's saved tensor and its LoRA factors cover different rows")
    update.parts.setdefault(target, []).insert(0, FullPart(saved, reference))
    update.shapes[target] = (rows, *reference.shape[1:])


def _same_bytes(a: TensorInfo, b: TensorInfo) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    for byte0, byte1 in byte_ranges(a.nbytes):
        with a.window(byte0, byte1 - byte0) as first, b.window(byte0, byte1 - byte0) as second:
            if first != second:
                return False
    return True
