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
only that) starts torchrun, each of its processes training as under `llamafactory-cli train`
with FORCE_TORCHRUN (`run_rank`); several nodes start one torchrun per node with srun
(shadowft.training.launch). Without CUDA (a CPU node, or SLURM's fake GPUs in CI) the
processes train on the CPU, with DDP over gloo.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from shadowft.io import atomic_directory, atomic_write_json
from shadowft.training.arguments import check_arguments, read_yaml, write_yaml
from shadowft.training.launch import (
    LLAMAFACTORY_WORKER_ENVIRONMENT,
    ZERO3_CONFIG,
    Launch,
    LaunchError,
    launch_from_slurm,
    srun_command,
    uses_zero3,
)

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
    world_size = launch.nproc_per_node * nodes
    if world_size > 1:
        args = _with_distribution(args, world_size, work, cuda=_cuda_available())
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


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _with_distribution(args: dict[str, Any], world_size: int, work: Path, *, cuda: bool) -> dict[str, Any]:
    """`args` for `world_size` processes, with what the user did not set: on GPUs the ZeRO-3
    configuration when the run needs it; without CUDA the gloo backend and no ZeRO-3.

    Without CUDA (a CPU node, or SLURM's fake GPUs in CI) NCCL cannot run and ZeRO-3 has no
    GPUs to shard over: every process holds the whole model and DDP averages the gradients.
    A `deepspeed` key in the hyper-parameters (a configuration file, or null for none) wins,
    and so does a `ddp_backend`.
    """
    if not cuda:
        print(f"shadowft: no CUDA device: {world_size} processes on the CPU, DDP over gloo", file=sys.stderr)
        return {"ddp_backend": "gloo", **args}
    if "deepspeed" in args:
        return args
    lora_fits = True
    if args["finetuning_type"] == "lora":
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
        srun = srun_command(nodes, launch.nproc_per_node)
        print(f"shadowft: {' '.join(srun + node_launcher)}", file=sys.stderr, flush=True)
        status = subprocess.run(srun + node_launcher).returncode
        if status:
            raise LaunchError(
                f"training over {nodes} nodes failed: srun exited with {status}; "
                f"each node's lines above start with its task number (0: to {nodes - 1}:)"
            )
        return
    forced = os.environ.get("FORCE_TORCHRUN", "0").lower() in ("1", "true", "y")
    if launch.in_process and not forced:
        from llamafactory.train.tuner import run_exp

        run_exp(args=args)
        return
    _run_torchrun(config_yaml, launch)


def _run_torchrun(config_yaml: Path, launch: Launch) -> None:
    """torchrun with `launch`'s rendezvous, each of its processes training from `config_yaml` (`run_rank`)."""
    env = {**LLAMAFACTORY_WORKER_ENVIRONMENT, **os.environ}
    command = [sys.executable, "-m", "torch.distributed.run", *launch.torchrun_options()]
    subprocess.run([*command, "-m", "shadowft.training", "rank", os.fspath(config_yaml)], env=env, check=True)


# The variables torchrun gives each of its processes: where it sits in the whole run.
RANK_VARIABLES = ("RANK", "WORLD_SIZE", "GROUP_RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def run_rank(config_yaml: Path) -> None:
    """One process of a torchrun launch: LLaMA-Factory's training from `config_yaml`, as its
    launcher module runs it under torchrun, once the process has said in the log where it sits."""
    _set_offline_environment()
    said = " ".join(f"{name}={os.environ.get(name, '(unset)')}" for name in RANK_VARIABLES)
    print(f"shadowft: rank on {socket.gethostname()}: {said}", file=sys.stderr, flush=True)
    import torch

    if not torch.cuda.is_available():
        allow_indexed_cpu_locations()
    from llamafactory.train.tuner import run_exp

    run_exp(args=read_yaml(config_yaml))


@functools.cache
def allow_indexed_cpu_locations() -> None:
    """Let torch.load read tensors onto the device "cpu:N", in this process.

    accelerate names the device of each process of a run on CPUs cpu:0, cpu:1, ..., and the
    transformers Trainer, resuming a run of several processes, loads the optimizer's state
    onto that device (map_location), which torch's own loader refuses: "don't know how to
    restore data location of torch.storage.UntypedStorage (tagged with cpu:0)". The state is
    on the CPU already: keep it there. Once per process (a second registration would tie).
    """
    import torch.serialization

    def restore_on_cpu(storage, location: str):
        return storage if re.fullmatch(r"cpu:\d+", location) else None

    # Consulted just after torch's own CPU loader (priority 10), which takes plain "cpu"; it
    # tags nothing, so saving is unchanged.
    torch.serialization.register_package(11, lambda storage: None, restore_on_cpu)


def launch_node(config_yaml: Path, nodes: int, gpus_per_node: int) -> None:
    """One node's part of a multi-node run, started by srun on every node of the job; it says in
    the log where it sits in the rendezvous, as derived from SLURM's environment."""
    _set_offline_environment()
    launch = launch_from_slurm(os.environ, nodes, gpus_per_node)
    said = " ".join(f"{name}={value}" for name, value in launch.rendezvous().items())
    node_id = os.environ.get("SLURM_NODEID")
    print(f"shadowft: node {socket.gethostname()} (SLURM_NODEID={node_id}): {said}", file=sys.stderr, flush=True)
    _run_torchrun(config_yaml, launch)


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
