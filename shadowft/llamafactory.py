"""LLaMA-Factory arguments as data, and the runner that trains and exports in the train environment.

`training_arguments` builds the argument dict (the paper's hyper-parameters, then the user's
overrides) and `write_yaml` stores it as the tracked YAML a training rule consumes. The rest
runs in the train environment, where this repository is on PYTHONPATH but not installed: the
module top level imports only the stdlib and yaml, LLaMA-Factory is imported inside functions.

    python -m shadowft.llamafactory train CONFIG.yaml MODEL_OUT [--gpus G] [--nodes N]
    python -m shadowft.llamafactory export --model M --adapter A --template T OUT

Why training runs in this process rather than as a `llamafactory-cli` child: importing
LLaMA-Factory takes ~10 s and the arguments must be checked against its dataclasses before it
starts, so one process does both; `llamafactory-cli train` itself calls the same `run_exp()`
in-process on a single device. Several devices need one process per rank, so that case (and
only that) launches `llamafactory-cli train` with FORCE_TORCHRUN, as LLaMA-Factory's launcher
would; several nodes start one such launcher per node with srun (shadowft.launch).
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from shadowft import demo
from shadowft.io import atomic_directory, atomic_write_json, atomic_write_text
from shadowft.launch import ZERO3_CONFIG, Launch, launch_from_slurm, srun_command, uses_zero3

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
MANAGED_KEYS = frozenset(
    {
        "model_name_or_path",
        "dataset_dir",
        "dataset",
        "template",
        "finetuning_type",
        "stage",
        "output_dir",
        "seed",
        "trust_remote_code",
    }
)

# The embedded demo (shadowft.demo) on 2 CPU cores: each call trains for seconds. INSTRUCT must
# know its chat skills whatever the seed (its held-out score is the benchmark of what tuning
# keeps): 3 epochs at 1e-3 reach 97.5-100 on seeds 0-2, where 3 epochs at 3e-4 gave 50-100 and
# 1 epoch 16. The price is a pair further apart than real ones (sigma 15-18%; the paper's
# under 2%, Qwen3-4B 5.6%). bf16 is off: CPUs emulate it slowly.
_DEMO_COMMON: dict[str, Any] = {
    "bf16": False,
    "default_system": demo.DEFAULT_SYSTEM,
    "cutoff_len": 128,
    "per_device_train_batch_size": 16,
    "gradient_accumulation_steps": 1,
    "warmup_ratio": 0.05,
    "logging_steps": 10,
    "save_steps": 50,
}
DEMO_OVERRIDES: dict[str, dict[str, Any]] = {
    # Packed into 64-token blocks: short documents, twice the optimizer steps per token.
    "pretrain": {**_DEMO_COMMON, "cutoff_len": 64, "num_train_epochs": 3.0, "learning_rate": 3.0e-3},
    "instruct": {**_DEMO_COMMON, "num_train_epochs": 3.0, "learning_rate": 1.0e-3},
}
# How the demo pair is made, step by step: (stage, tuning, dataset) for `demo_pair_arguments`.
DEMO_PAIR_STEPS: dict[str, tuple[str, str, str]] = {
    "pretrain": ("pt", "full", demo.CORPUS_DATASET),
    "instruct": ("sft", "full", demo.CHAT_DATASET),
}

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")
TRAINER_STATE = "trainer_state.json"
# Written into the work dir by `run_training` and published with the model: the arguments
# LLaMA-Factory ran with (the tracked YAML plus the launch's additions), the ZeRO-3
# configuration when one was used, and how the run was spread over devices.
EFFECTIVE_ARGUMENTS_FILE = "shadowft_train_args.yaml"
DEEPSPEED_CONFIG_FILE = "shadowft_deepspeed_zero3.json"
LAUNCH_RECORD_FILE = "shadowft_launch.json"
# What `run_training` leaves behind: weights of a full model or of an adapter.
MODEL_WEIGHT_PATTERNS = ("model*.safetensors", "adapter_model.safetensors")
OFFLINE_ENVIRONMENT = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


class UnknownArgumentError(ValueError):
    """A key that no LLaMA-Factory argument dataclass defines, or a template it does not know; the message names it."""


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
    dropout): the workflow passes the run's seed (shadowft.runs). `learning_rate` and
    `lora_rank`, when given, are the run's own (its folder names them) and win over
    `overrides`; the LoRA alpha then follows as 2 x rank unless `overrides` set it.

    Keys are checked against LLaMA-Factory's own dataclasses by `check_arguments` in the train
    environment (this function runs in the core one, without LLaMA-Factory).
    """
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
    managed = sorted(MANAGED_KEYS.intersection(overrides))
    if managed:
        raise ValueError(
            f"LLaMA-Factory override(s) {', '.join(managed)} are set by the workflow (model, dataset, "
            "template, tuning, stage, output path; the seed by the run's seed; trust_remote_code by the model's "
            "entry in `models` or its family file) and cannot be overridden"
        )
    swept: dict[str, Any] = {}
    if learning_rate is not None:
        swept["learning_rate"] = float(learning_rate)
    if lora_rank is not None:
        if tuning != "lora":
            raise ValueError(f"lora_rank applies to LoRA runs only (tuning {tuning!r})")
        swept["lora_rank"] = int(lora_rank)
        swept["lora_alpha"] = overrides.get("lora_alpha", 2 * int(lora_rank))
    return {
        **RUN_DEFAULTS,
        **PAPER_DEFAULTS,
        **TUNING_DEFAULTS[tuning],
        **overrides,
        **swept,
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


def demo_pair_arguments(
    step: str,
    *,
    model_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    seed: int = RUN_DEFAULTS["seed"],
) -> dict[str, Any]:
    """Arguments of one step that makes the demo pair: "pretrain" (init -> BASE), "instruct" (BASE -> INSTRUCT)."""
    stage, tuning, dataset = DEMO_PAIR_STEPS[step]
    return training_arguments(
        model_dir=model_dir,
        dataset_dir=dataset_dir,
        dataset=dataset,
        template=demo.TEMPLATE,
        tuning=tuning,
        output_dir=output_dir,
        stage=stage,
        overrides=DEMO_OVERRIDES[step],
        seed=seed,
    )


def write_yaml(args: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Write `args` as YAML with sorted keys, atomically: same arguments, same bytes."""
    atomic_write_text(Path(path), yaml.safe_dump(dict(args), sort_keys=True, default_flow_style=False))


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    args = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(args, dict):
        raise ValueError(f"{path}: expected a mapping of LLaMA-Factory arguments")
    return args


def check_arguments(args: Mapping[str, Any], *, source: str = "arguments", kind: str = "train") -> None:
    """Fail with the offending keys named if LLaMA-Factory would reject `args` as unknown (train env only).

    `kind` is "train" or "export", the two argument sets of `llamafactory-cli`.
    """
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
    known = {field for cls in dataclasses_of for field in cls.__dataclass_fields__}
    unknown = sorted(set(args) - known)
    if unknown:
        described = []
        for key in unknown:
            close = difflib.get_close_matches(key, known, n=1)
            described.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise UnknownArgumentError(f"{source}: unknown LLaMA-Factory argument(s): {', '.join(described)}")


def check_template(name: str, *, source: str = "template") -> None:
    """Fail unless LLaMA-Factory knows the chat template `name` (train env only)."""
    from llamafactory.data.template import TEMPLATES

    if name not in TEMPLATES:
        close = difflib.get_close_matches(name, TEMPLATES, n=3)
        hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
        raise UnknownArgumentError(f"{source}: LLaMA-Factory {_pinned_version()} has no template {name!r}{hint}")


def _pinned_version() -> str:
    from importlib.metadata import version

    return version("llamafactory")


def write_checked_config(spec: Mapping[str, Any], out: str | os.PathLike) -> None:
    """`training_arguments(**spec)` checked against the installed LLaMA-Factory (argument names
    and template, with the closest known names), then written as YAML: a run's mistakes surface
    when its config is written, before any training job starts (train env only)."""
    args = training_arguments(**spec)
    source = f"{out} (training.hyperparameters and the pair's template and hyperparameters)"
    check_arguments(args, source=source)
    check_template(args["template"], source=source)
    write_yaml(args, out)


def run_training(
    config_yaml: str | os.PathLike,
    model_out: str | os.PathLike,
    *,
    gpus: int | None = None,
    nodes: int = 1,
) -> dict[str, Any]:
    """Train with LLaMA-Factory from `config_yaml`, resuming from its output_dir, then publish the model.

    The YAML's output_dir is a work dir that keeps checkpoint-* between attempts; LLaMA-Factory
    resumes from the newest. On success the final model or adapter (not the checkpoints) moves
    into `model_out` atomically with the launch record, and the work dir is removed.
    `gpus` is what the job was given in all, spread evenly over `nodes` (default: every
    visible device of this node); more than one device starts one process per device, and
    `nodes` > 1 one launcher per node.
    Returns the launch record: world size, ZeRO-3 or not, the checkpoint resumed from, seconds.
    """
    _set_offline_environment()
    config_yaml = Path(config_yaml)
    args = read_yaml(config_yaml)
    check_arguments(args, source=str(config_yaml))
    work = Path(args["output_dir"])
    _report_devices()
    resumed_from = prepare_work_dir(work)
    if resumed_from:
        print(f"shadowft: resuming {work} from {resumed_from}", file=sys.stderr, flush=True)
    launch = _single_node_launch(gpus, nodes)
    args = _with_zero3(args, launch.nproc_per_node * nodes, work)
    effective_yaml = work / EFFECTIVE_ARGUMENTS_FILE
    write_yaml(args, effective_yaml)

    started = time.monotonic()
    _launch_training(effective_yaml, args, launch, nodes)
    record = {
        "nodes": nodes,
        "processes_per_node": launch.nproc_per_node,
        "deepspeed": args.get("deepspeed"),
        "resumed_from": resumed_from,
        "seconds": round(time.monotonic() - started, 1),
    }
    atomic_write_json(work / LAUNCH_RECORD_FILE, record)

    final = [entry for entry in work.iterdir() if not CHECKPOINT_PATTERN.match(entry.name)]
    if not any(True for pattern in MODEL_WEIGHT_PATTERNS for _ in work.glob(pattern)):
        raise RuntimeError(f"LLaMA-Factory finished but left no model weights in {work}")
    with atomic_directory(Path(model_out)) as tmp:
        for entry in final:
            os.replace(entry, tmp / entry.name)
    shutil.rmtree(work)
    return record


def _single_node_launch(gpus: int | None, nodes: int) -> Launch:
    """This node's share of the run: one process per GPU of the node (at least one)."""
    if gpus is None:
        from llamafactory.extras.misc import get_device_count

        gpus = get_device_count() * nodes
    if nodes < 1 or gpus < 0 or gpus % nodes:
        raise ValueError(f"gpus must be a multiple of nodes >= 1 (got {gpus} GPUs over {nodes} nodes)")
    return Launch(nnodes=1, nproc_per_node=max(gpus // nodes, 1))


def _with_zero3(args: dict[str, Any], world_size: int, work: Path) -> dict[str, Any]:
    """`args` with the ZeRO-3 configuration when the run needs it and the user named none.

    A `deepspeed` key in the hyper-parameters (a configuration file, or null for none) wins.
    """
    if "deepspeed" in args:
        return args
    lora_fits = True
    if args["finetuning_type"] == "lora" and world_size > 1:
        lora_fits = _lora_fits_one_gpu(Path(args["model_name_or_path"]))
    if not uses_zero3(args["finetuning_type"], world_size, lora_fits_one_gpu=lora_fits):
        return args
    config_path = work / DEEPSPEED_CONFIG_FILE
    atomic_write_json(config_path, ZERO3_CONFIG)
    print(f"shadowft: {world_size} processes, sharding with DeepSpeed ZeRO-3 ({config_path})", file=sys.stderr)
    return {**args, "deepspeed": os.fspath(config_path)}


def _lora_fits_one_gpu(model_dir: Path) -> bool:
    import torch

    from shadowft.resources import Workload, count_parameters, fits_one_gpu

    gpu_mem_mb = torch.cuda.get_device_properties(0).total_memory >> 20
    return fits_one_gpu(Workload.TRAIN_LORA, count_parameters(model_dir), gpu_mem_mb)


def _report_devices() -> None:
    """Say in the job's log which devices it was given (SLURM sets both variables)."""
    shown = {name: os.environ.get(name, "(unset)") for name in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_GPUS")}
    print(
        "shadowft: devices " + " ".join(f"{name}={value}" for name, value in shown.items()), file=sys.stderr, flush=True
    )


def prepare_work_dir(work: Path) -> str | None:
    """Make `work` resumable by LLaMA-Factory; return the checkpoint it will resume from, if any.

    A checkpoint without trainer_state.json was cut off while saving and would break the
    resume, so it goes. Without any checkpoint, leftovers of a killed attempt go too:
    LLaMA-Factory refuses an output_dir holding weights but no checkpoint.
    """
    work.mkdir(parents=True, exist_ok=True)
    checkpoints = []
    for entry in work.iterdir():
        match = CHECKPOINT_PATTERN.match(entry.name)
        if match and entry.is_dir():
            if (entry / TRAINER_STATE).is_file():
                checkpoints.append((int(match.group(1)), entry.name))
            else:
                print(f"shadowft: removing incomplete {entry}", file=sys.stderr, flush=True)
                shutil.rmtree(entry)
    if checkpoints:
        return max(checkpoints)[1]
    _empty_directory(work)
    return None


def export_merged(
    model_dir: str | os.PathLike,
    adapter_dir: str | os.PathLike,
    template: str,
    out_dir: str | os.PathLike,
    *,
    trust_remote_code: bool = False,
) -> None:
    """Merge a LoRA adapter into `model_dir` with LLaMA-Factory's export, into `out_dir` atomically.

    The merged model keeps `model_dir`'s dtype, so it compares like for like with a graft onto it.
    """
    _set_offline_environment()
    from llamafactory.train.tuner import export_model

    out_dir = Path(out_dir)
    with atomic_directory(out_dir) as tmp:
        args = {
            "model_name_or_path": os.fspath(model_dir),
            "adapter_name_or_path": os.fspath(adapter_dir),
            "template": template,
            "finetuning_type": "lora",
            "trust_remote_code": trust_remote_code,
            "infer_dtype": _config_dtype(Path(model_dir)),
            "export_dir": os.fspath(tmp),
            "export_legacy_format": False,
        }
        check_arguments(args, source="export", kind="export")
        export_model(args)


def _launch_training(config_yaml: Path, args: dict[str, Any], launch: Launch, nodes: int) -> None:
    if nodes > 1:
        node_launcher = [sys.executable, "-m", "shadowft.llamafactory", "node-launch", os.fspath(config_yaml)]
        node_launcher += ["--nodes", str(nodes), "--gpus-per-node", str(launch.nproc_per_node)]
        subprocess.run(srun_command(nodes, launch.nproc_per_node) + node_launcher, check=True)
        return
    forced = os.environ.get("FORCE_TORCHRUN", "0").lower() in ("1", "true", "y")
    if launch.in_process and not forced:
        from llamafactory.train.tuner import run_exp

        run_exp(args=args)
        return
    _run_launcher(config_yaml, launch)


def _run_launcher(config_yaml: Path, launch: Launch) -> None:
    """LLaMA-Factory's own launcher, which starts torchrun with `launch`'s rendezvous."""
    # The launcher calls `torchrun` by name: this environment's copy must come first on PATH.
    path = os.pathsep.join([os.fspath(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, **launch.environment(), "PATH": path}
    subprocess.run([sys.executable, "-m", "llamafactory.cli", "train", os.fspath(config_yaml)], env=env, check=True)


def launch_node(config_yaml: Path, nodes: int, gpus_per_node: int) -> None:
    """One node's part of a multi-node run, started by srun on every node of the job."""
    _set_offline_environment()
    _run_launcher(config_yaml, launch_from_slurm(os.environ, nodes, gpus_per_node))


def _set_offline_environment() -> None:
    # Read by huggingface_hub at import time: set before LLaMA-Factory is imported. A value the
    # caller set wins, so a rule that may download can say so.
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)


def _config_dtype(model_dir: Path) -> str:
    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    dtype = config.get("torch_dtype") or config.get("dtype")
    return dtype if dtype in ("float32", "float16", "bfloat16") else "auto"


def _empty_directory(directory: Path) -> None:
    for entry in directory.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def main(argv: Iterable[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shadowft.llamafactory", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train from a YAML and publish the model (resumes)")
    train.add_argument("config", type=Path, help="LLaMA-Factory YAML written by write_yaml")
    train.add_argument("model_out", type=Path, help="where the final model or adapter goes")
    train.add_argument("--gpus", type=int, default=None, help="GPUs the job has in all (default: all visible)")
    train.add_argument("--nodes", type=int, default=1, help="nodes the job spans (one launcher per node via srun)")
    node = commands.add_parser("node-launch", help="(internal) one node's launcher in a multi-node run")
    node.add_argument("config", type=Path)
    node.add_argument("--nodes", type=int, required=True)
    node.add_argument("--gpus-per-node", type=int, required=True)
    written = commands.add_parser("config", help="write one run's checked LLaMA-Factory YAML")
    written.add_argument("--spec", type=json.loads, required=True, help="training_arguments' keywords, as JSON")
    written.add_argument("out", type=Path)
    export = commands.add_parser("export", help="merge a LoRA adapter into its model")
    export.add_argument("--model", type=Path, required=True)
    export.add_argument("--adapter", type=Path, required=True)
    export.add_argument("--template", required=True)
    export.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code")
    export.add_argument("out", type=Path)
    options = parser.parse_args(None if argv is None else list(argv))
    if options.command == "train":
        run_training(options.config, options.model_out, gpus=options.gpus, nodes=options.nodes)
    elif options.command == "config":
        try:
            write_checked_config(options.spec, options.out)
        except (UnknownArgumentError, ValueError, TypeError) as error:
            sys.exit(f"error: {error}")
    elif options.command == "node-launch":
        launch_node(options.config, options.nodes, options.gpus_per_node)
    else:
        export_merged(
            options.model, options.adapter, options.template, options.out, trust_remote_code=options.trust_remote_code
        )


if __name__ == "__main__":
    main()
