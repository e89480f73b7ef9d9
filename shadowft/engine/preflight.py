"""The checks a base/instruct pair passes before any training job starts.

They read only configs and safetensors headers, so they take milliseconds, while the
mistakes they catch would otherwise surface hours later: a graft onto an instruct model
of another architecture or size, a truncated or missing shard, pickle-only weights.
Tensor shapes follow the graft's own rule (``layout.shared_rows``), so a pair that passes
here is one the graft accepts under the same vocabulary policy.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from shadowft.engine.layout import CheckpointError, is_output_head, shared_rows
from shadowft.engine.reader import Checkpoint
from shadowft.io import atomic_write_json

#: config.json keys that fix the shapes and meaning of the weights; base and instruct must agree.
ARCHITECTURE_KEYS = (
    "model_type",
    "architectures",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
)
#: Multimodal configs (Gemma-3, ...) keep the language model's sizes in a nested config.
NESTED_CONFIGS = ("text_config",)


class PreflightError(CheckpointError):
    """The pair cannot be Shadow-FT'd as configured; the message names the file, key or tensor."""


@dataclass(frozen=True)
class PairCheck:
    """What was checked, kept beside the results so a rerun can see it."""

    base: str
    instruct: str
    tensors: int
    parameters: int
    vocab_rows: tuple[int, int] | None  # embedding rows of base and instruct, where they differ


def check_pair(base: Path, instruct: Path, *, vocab_mismatch: str = "error", allow_pickle: bool = False) -> PairCheck:
    """Raise PreflightError (or the reader's CheckpointError naming the file) unless the pair fits."""
    with (
        Checkpoint(base, allow_pickle=allow_pickle) as base_weights,
        Checkpoint(instruct, allow_pickle=allow_pickle) as instruct_weights,
    ):
        _check_configs(Path(base), Path(instruct))
        names = _check_tensor_names(base_weights, instruct_weights)
        vocab_rows = None
        parameters = 0
        for name in names:
            base_shape, instruct_shape = base_weights[name].shape, instruct_weights[name].shape
            try:
                shared_rows(name, base_shape, instruct_shape, ("base", "instruct"), vocab_mismatch)
            except CheckpointError as error:
                raise PreflightError(f"{base} / {instruct}: {error}") from None
            if base_shape != instruct_shape:
                vocab_rows = (base_shape[0], instruct_shape[0])
            parameters += instruct_weights[name].numel
        return PairCheck(str(base), str(instruct), len(names), parameters, vocab_rows)


def _check_configs(base: Path, instruct: Path) -> None:
    configs = {}
    for folder in (base, instruct):
        file = folder / "config.json"
        if not file.is_file():
            raise PreflightError(f"{file}: missing; a model folder needs its config.json")
        configs[folder] = json.loads(file.read_text())
    for key, base_value, instruct_value in _architecture(configs[base], configs[instruct]):
        if base_value != instruct_value:
            raise PreflightError(
                f"{base}/config.json and {instruct}/config.json differ in {key}: {base_value!r} against "
                f"{instruct_value!r}; Shadow-FT grafts an update onto the instruct model of the SAME base "
                "architecture (check the pair's models)"
            )


def _architecture(base: dict, instruct: dict, prefix: str = ""):
    for key in ARCHITECTURE_KEYS:
        if key in base or key in instruct:
            yield prefix + key, base.get(key), instruct.get(key)
    for nested in NESTED_CONFIGS:
        if isinstance(base.get(nested), dict) and isinstance(instruct.get(nested), dict):
            yield from _architecture(base[nested], instruct[nested], f"{prefix}{nested}.")


def _check_tensor_names(base: Checkpoint, instruct: Checkpoint) -> list[str]:
    """The tensors both hold; an output head may be tied in one and separate in the other."""
    for one, other in ((base, instruct), (instruct, base)):
        missing = sorted(name for name in one.tensors.keys() - other.tensors.keys() if not is_output_head(name))
        if missing:
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise PreflightError(
                f"{other.path}: has no tensor {missing[0]!r}{more}, which {one.path} has; "
                "the two models do not share a layout"
            )
    return sorted(base.tensors.keys() & instruct.tensors.keys())


def write_pair_check(base: Path, instruct: Path, out: Path, *, vocab_mismatch: str, allow_pickle: bool) -> PairCheck:
    check = check_pair(base, instruct, vocab_mismatch=vocab_mismatch, allow_pickle=allow_pickle)
    atomic_write_json(out, asdict(check))
    return check
