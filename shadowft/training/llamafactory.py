"""LLaMA-Factory's runner: train and export in the train environment.

A run's arguments are built, checked and stored as YAML by `shadowft.training.arguments`. This
module runs in the train environment, where this repository is on
PYTHONPATH but not installed: the module top level imports only the stdlib and yaml,
LLaMA-Factory is imported inside functions.

    python -m shadowft.training train CONFIG.yaml MODEL_OUT [--gpus G] [--nodes N]
    python -m shadowft.training export --model M --adapter A --template T OUT

Why training runs in this process rather than as a `llamafactory-cli` child: importing
LLaMA-Factory takes ~10 s and the arguments must be checked against its dataclasses before it
starts, so one process does both; `llamafactory-cli train` itself calls the same `run_exp()`
in-process on a single device. Several devices need one process per rank, so that case (and
only that) launches `llamafactory-cli train` with FORCE_TORCHRUN, as LLaMA-Factory's launcher
would; several nodes start one such launcher per node with srun (shadowft.training.launch).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shadowft.io import atomic_directory, atomic_write_json
from shadowft.training.arguments import check_arguments, read_yaml, write_yaml
from shadowft.training.launch import ZERO3_CONFIG, Launch, launch_from_slurm, srun_command, uses_zero3

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

    from shadowft.training.resources import Workload, count_parameters, fits_one_gpu

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
        node_launcher = [sys.executable, "-m", "shadowft.training", "node-launch", os.fspath(config_yaml)]
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
