"""A run's LLaMA-Factory arguments as data: built from the defaults, the run and the overrides, checked, stored as YAML.

`training_arguments` builds the argument dict (run mechanics, the paper's hyper-parameters,
then the user's overrides) in the core environment; `check_arguments` and `check_names`
check it against the installed LLaMA-Factory (train environment only; LLaMA-Factory is
imported inside them); `write_yaml` stores it as the tracked YAML a training rule consumes.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from shadowft.io import atomic_write_text

TUNINGS = ("lora", "full")
STAGES = ("pt", "sft", "rm", "ppo", "dpo", "kto")

# The official run.sh (docs/paper.md). LoRA alpha is LLaMA-Factory's default written out (2 x rank)
# so the scale alpha/r that the delta engine reads is visible in the YAML. DeepSpeed ZeRO-3 and
# flash-attn are launch/hardware choices: pass `deepspeed`/`flash_attn` as overrides.
PAPER_DEFAULTS: dict[str, Any] = {
    "cutoff_len": 4096,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 16,
    "num_train_epochs": 1.0,
    "lr_scheduler_type": "cosine",
    "warmup_ratio": 0.1,
    "bf16": True,
    "logging_steps": 1,
}
TUNING_DEFAULTS: dict[str, dict[str, Any]] = {
    "lora": {"learning_rate": 2.0e-4, "lora_rank": 8, "lora_alpha": 16, "lora_target": "all"},
    "full": {"learning_rate": 1.0e-5},
}

# Mechanics of a reproducible, offline, resumable run; overridable like any default.
RUN_DEFAULTS: dict[str, Any] = {
    "do_train": True,
    "seed": 42,
    "report_to": "none",
    "plot_loss": False,
    "trust_remote_code": False,
    "overwrite_cache": False,
    # Resume needs checkpoints with optimizer state in output_dir. Only the newest is kept:
    # the Trainer deletes older ones after the new one is complete, and `run_training` drops
    # an incomplete one (no trainer_state.json, written last), so one always survives a kill.
    "overwrite_output_dir": False,
    "save_strategy": "steps",
    "save_steps": 20,
    "save_total_limit": 1,
    "save_only_model": False,
    # A ZeRO-3 save of a large model outlasts torch.distributed's default 30-minute timeout.
    "ddp_timeout": 180000000,
}

# Set by the arguments of `training_arguments`; an override would desynchronise the workflow's paths
# (or, for the seed, the experiment's one seed, which the demo build shares).
MANAGED_KEYS: dict[str, str] = {
    "model_name_or_path": "set by the pair's model (models, pairs)",
    "dataset_dir": "set by the run's dataset (datasets, training.dataset)",
    "dataset": "set by the run's dataset (datasets, training.dataset)",
    "template": "set by the pair's template (pairs.<pair>.template or its family file)",
    "finetuning_type": "set by the run's tuning (training.tunings)",
    "stage": "set by the run's stage (training.stages)",
    "output_dir": "set by the workflow's paths",
    "seed": "set by the run's seed (seed, training.seeds)",
    "trust_remote_code": "set by the model's entry in models or its family file",
}


class UnknownArgumentError(ValueError):
    """A key that no LLaMA-Factory argument dataclass defines, or a template it does not know; the message names it."""


# Keyword-only, one keyword per key of the JSON spec the training-config rule writes
# (`training_arguments(**spec)`), so a spec and the call name the same things.
def training_arguments(
    *,
    model_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    dataset: str,
    template: str,
    tuning: str,
    output_dir: str | os.PathLike,
    stage: str = "sft",
    overrides: Mapping[str, Any] | None = None,
    seed: int = RUN_DEFAULTS["seed"],
    learning_rate: float | None = None,
    lora_rank: int | None = None,
    trust_remote_code: bool = False,
) -> dict[str, Any]:
    """The LLaMA-Factory argument dict: run mechanics, paper defaults, then `overrides`.

    `trust_remote_code` is the trained model's own setting in the config (its model entry or
    family file), the same one its download and evaluation use; no override may change it.

    `seed` seeds everything random in the run (initialisation of LoRA weights, data order,
    dropout): the workflow passes the run's seed (shadowft.workflow.sweep). `learning_rate` and
    `lora_rank`, when given, are the run's own (its folder names them) and win over
    `overrides`; the LoRA alpha then follows as 2 x rank unless `overrides` set it.

    Keys are checked against LLaMA-Factory's own dataclasses by `check_arguments` in the train
    environment (this function runs in the core one, without LLaMA-Factory).
    """
    overrides = _checked_overrides(tuning, stage, seed, overrides)
    return {
        **RUN_DEFAULTS,
        **PAPER_DEFAULTS,
        **TUNING_DEFAULTS[tuning],
        **overrides,
        **_swept(tuning, learning_rate, lora_rank, overrides),
        "model_name_or_path": os.fspath(model_dir),
        "dataset_dir": os.fspath(dataset_dir),
        "dataset": dataset,
        "template": template,
        "finetuning_type": tuning,
        "stage": stage,
        "output_dir": os.fspath(output_dir),
        "seed": seed,
        "trust_remote_code": bool(trust_remote_code),
    }


def _checked_overrides(tuning: str, stage: str, seed: int, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """`overrides` as a dict, once the run's tuning, stage and seed and every override key are valid."""
    if tuning not in TUNINGS:
        raise ValueError(f"tuning must be one of {', '.join(TUNINGS)}, got {tuning!r}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    overrides = dict(overrides or {})
    for key in overrides:
        if not isinstance(key, str):
            raise TypeError(f"LLaMA-Factory override keys must be strings, got {key!r}")
    managed = sorted(MANAGED_KEYS.keys() & overrides.keys())
    if managed:
        raise ValueError(
            "LLaMA-Factory override(s) cannot set what the workflow sets: "
            + "; ".join(f"{key} is {MANAGED_KEYS[key]}" for key in managed)
        )
    return overrides


def _swept(tuning: str, learning_rate: float | None, lora_rank: int | None, overrides: Mapping[str, Any]) -> dict:
    """The run's own swept values (its folder names them), which win over `overrides`."""
    swept: dict[str, Any] = {}
    if learning_rate is not None:
        swept["learning_rate"] = float(learning_rate)
    if lora_rank is not None:
        if tuning != "lora":
            raise ValueError(f"lora_rank applies to LoRA runs only (tuning {tuning!r})")
        swept["lora_rank"] = int(lora_rank)
        swept["lora_alpha"] = overrides.get("lora_alpha", 2 * int(lora_rank))
    return swept


def write_yaml(args: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write `args` as YAML with sorted keys, atomically: same arguments, same bytes."""
    atomic_write_text(Path(path), yaml.safe_dump(dict(args), sort_keys=True, default_flow_style=False))


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    args = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(args, dict):
        raise ValueError(f"{path}: expected a mapping of LLaMA-Factory arguments")
    return args


def _known_arguments(kind: str) -> set[str]:
    """The argument names of LLaMA-Factory's `kind` ("train" or "export") command (train env only)."""
    from llamafactory import hparams

    dataclasses_of = {
        "train": (
            hparams.ModelArguments,
            hparams.DataArguments,
            hparams.TrainingArguments,
            hparams.FinetuningArguments,
            hparams.GeneratingArguments,
        ),
        "export": (
            hparams.ModelArguments,
            hparams.DataArguments,
            hparams.FinetuningArguments,
            hparams.GeneratingArguments,
        ),
    }[kind]
    return {field for cls in dataclasses_of for field in cls.__dataclass_fields__}


def _closest(name: str, known) -> str:
    close = difflib.get_close_matches(name, known, n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def check_arguments(args: Mapping[str, Any], *, source: str = "arguments", kind: str = "train") -> None:
    """Fail with the offending keys named if LLaMA-Factory would reject `args` as unknown (train env only).

    `kind` is "train" or "export", the two argument sets of `llamafactory-cli`.
    """
    known = _known_arguments(kind)
    unknown = sorted(set(args) - known)
    if unknown:
        described = ", ".join(f"{key!r}{_closest(key, known)}" for key in unknown)
        raise UnknownArgumentError(f"{source}: unknown LLaMA-Factory argument(s): {described}")


def check_names(names: Mapping[str, Mapping[str, Sequence[str]]]) -> dict[str, Any]:
    """Check every argument name and chat template an experiment's runs use against the installed
    LLaMA-Factory, before any model or dataset is there (train env only).

    `names` is ``{"arguments": {name: [where, ...]}, "templates": {name: [where, ...]}}``, each
    name with the config keys it comes from (shadowft.workflow.plan). Raises UnknownArgumentError
    naming every unknown name where it was set, with the closest known names; returns the record
    of what was checked.
    """
    from llamafactory.data.template import TEMPLATES

    known = _known_arguments("train")
    problems = [
        f"{where}: unknown LLaMA-Factory argument {name!r}{_closest(name, known)}"
        for name, places in sorted(names["arguments"].items())
        if name not in known
        for where in places
    ]
    problems += [
        f"{where}: LLaMA-Factory {_pinned_version()} has no template {name!r}{_closest(name, TEMPLATES)}"
        for name, places in sorted(names["templates"].items())
        if name not in TEMPLATES
        for where in places
    ]
    if problems:
        raise UnknownArgumentError("\n".join(problems))
    return {
        "llamafactory": _pinned_version(),
        "arguments": sorted(names["arguments"]),
        "templates": sorted(names["templates"]),
    }


def _pinned_version() -> str:
    from importlib.metadata import version

    return version("llamafactory")


def write_config(spec: Mapping[str, Any], out: str | os.PathLike) -> None:
    """`training_arguments(**spec)` written as the run's YAML. Its names were checked against the
    installed LLaMA-Factory by `check_names`, before any download; training checks them again."""
    write_yaml(training_arguments(**spec), out)
