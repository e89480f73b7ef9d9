"""How a training job spreads over the GPUs and nodes SLURM gave it.

One GPU (or none) trains in the job's own process. Several GPUs on one node start one
process per GPU through torchrun, each training as LLaMA-Factory's own launcher
(``llamafactory-cli train`` with FORCE_TORCHRUN) would have it. Several nodes start one
launcher per node with ``srun``, each told the rendezvous (nodes, its node rank, the master's
address and port) derived here from SLURM's environment, so every node computes the same
answer without talking to the others. torchrun is started here rather than through
LLaMA-Factory's launcher, which passes torchrun no options on a fixed rendezvous: so the
rendezvous is bounded in time (RENDEZVOUS_TIMEOUT_S) and a failed rank is never restarted.

Full fine-tuning on more than one GPU shards the model with DeepSpeed ZeRO-3, as the paper
did; so does LoRA when one GPU cannot hold the base weights. The ZeRO-3 configuration is
data, written beside the run and kept with the model.

Standard library only: this runs in the train environment from the repository root.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# Ports a job's rendezvous may use: above the well-known and registered ranges most
# clusters keep free for users, below the kernel's ephemeral range (32768+).
RENDEZVOUS_PORTS = range(20000, 32000)
# How long the first node's torchrun waits for the others, and the others for it, to join the
# rendezvous (torch's static rendezvous; its default is 600 s). srun starts every node's
# launcher at once and torchrun imports only torch before joining, so a node missing after
# this never started or cannot reach the first one (a wrong address): fail, do not wait.
RENDEZVOUS_TIMEOUT_S = 300
# What LLaMA-Factory's own launcher (0.9.5, OPTIM_TORCH on by default) sets for the processes
# it starts through torchrun; a value the job already has wins.
LLAMAFACTORY_WORKER_ENVIRONMENT = {
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TORCH_NCCL_AVOID_RECORD_STREAMS": "1",
}

# LLaMA-Factory's own ZeRO-3 example configuration ("auto" values are filled in by the
# transformers Trainer from the training arguments): parameters, gradients and optimizer
# state sharded over every GPU, and the 16-bit weights gathered when the model is saved,
# so the output is an ordinary Hugging Face checkpoint the delta engine reads.
ZERO3_CONFIG: dict = {
    "train_batch_size": "auto",
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "gradient_clipping": "auto",
    "zero_allow_untested_optimizer": True,
    "fp16": {
        "enabled": "auto",
        "loss_scale": 0,
        "loss_scale_window": 1000,
        "initial_scale_power": 16,
        "hysteresis": 2,
        "min_loss_scale": 1,
    },
    "bf16": {"enabled": "auto"},
    "zero_optimization": {
        "stage": 3,
        "overlap_comm": False,
        "contiguous_gradients": True,
        "sub_group_size": 1e9,
        "reduce_bucket_size": "auto",
        "stage3_prefetch_bucket_size": "auto",
        "stage3_param_persistence_threshold": "auto",
        "stage3_max_live_parameters": 1e9,
        "stage3_max_reuse_distance": 1e9,
        "stage3_gather_16bit_weights_on_model_save": True,
    },
}


class LaunchError(RuntimeError):
    """The job's environment does not describe the launch it was asked for."""


@dataclass(frozen=True)
class Launch:
    """Where one node's training processes sit in the whole job."""

    nnodes: int
    nproc_per_node: int
    node_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int | None = None  # None: torchrun picks a free port (one node only)

    def __post_init__(self) -> None:
        if self.nnodes < 1 or self.nproc_per_node < 1:
            raise ValueError(f"nnodes and nproc_per_node must be >= 1, got {self.nnodes}, {self.nproc_per_node}")
        if not 0 <= self.node_rank < self.nnodes:
            raise ValueError(f"node_rank {self.node_rank} is not in 0..{self.nnodes - 1}")
        if self.nnodes > 1 and self.master_port is None:
            raise ValueError("a launch over several nodes needs a fixed master_port")

    @property
    def world_size(self) -> int:
        return self.nnodes * self.nproc_per_node

    @property
    def in_process(self) -> bool:
        """One device: no torchrun, the job's own process trains."""
        return self.world_size == 1

    def rendezvous(self) -> dict[str, str]:
        """This node's place in the rendezvous, as torchrun's variables name it (for the log)."""
        names = {"NNODES": self.nnodes, "NODE_RANK": self.node_rank, "NPROC_PER_NODE": self.nproc_per_node}
        if self.master_port is not None:
            names.update(MASTER_ADDR=self.master_addr, MASTER_PORT=self.master_port)
        return {name: str(value) for name, value in names.items()}

    def torchrun_options(self) -> list[str]:
        """torchrun's options for this node: the rendezvous, bounded in time, and no restarts.

        One node uses torchrun's own local rendezvous on a free port. Several use the fixed
        (static) one: every node is told its rank, so NODE_RANK and the ranks torchrun gives
        its processes cannot be mixed up. A restart could not rejoin it, and the other nodes
        would wait for a rank that is gone: a failed rank fails the node's launcher at once.
        """
        if self.master_port is None:
            rendezvous = ["--standalone"]
        else:
            rendezvous = [
                f"--node-rank={self.node_rank}",
                f"--master-addr={self.master_addr}",
                f"--master-port={self.master_port}",
                f"--rdzv-conf=timeout={RENDEZVOUS_TIMEOUT_S}",
            ]
        return [f"--nnodes={self.nnodes}", f"--nproc-per-node={self.nproc_per_node}", *rendezvous, "--max-restarts=0"]


def uses_zero3(tuning: str, world_size: int, *, lora_fits_one_gpu: bool = True) -> bool:
    """Whether a run shards the model with ZeRO-3.

    Full fine-tuning on several GPUs does, as in the paper. LoRA on several GPUs does only
    when one GPU cannot hold the base weights; otherwise each GPU keeps a copy (data
    parallel), which is faster.
    """
    if tuning not in ("lora", "full"):
        raise ValueError(f"tuning must be lora or full, got {tuning!r}")
    if world_size <= 1:
        return False
    return tuning == "full" or not lora_fits_one_gpu


def launch_from_slurm(environ: Mapping[str, str], nodes: int, gpus_per_node: int) -> Launch:
    """This node's launch inside a SLURM job of `nodes` nodes with `gpus_per_node` GPUs each.

    Reads SLURM_JOB_NUM_NODES (or SLURM_NNODES), SLURM_NODEID, SLURM_JOB_NODELIST (or
    SLURM_NODELIST) and SLURM_JOB_ID. The master is the first host of the node list and
    the port is derived from the job id, so all nodes agree and concurrent jobs differ.
    """
    nproc = max(gpus_per_node, 1)
    if nodes == 1:
        return Launch(nnodes=1, nproc_per_node=nproc)
    allocated = _integer(environ, "SLURM_JOB_NUM_NODES", "SLURM_NNODES")
    if allocated < nodes:
        raise LaunchError(f"the job asked for {nodes} nodes but SLURM allocated {allocated}")
    nodelist = environ.get("SLURM_JOB_NODELIST") or environ.get("SLURM_NODELIST")
    if not nodelist:
        raise LaunchError("SLURM_JOB_NODELIST is not set: a multi-node launch must run inside a SLURM job")
    job_id = _integer(environ, "SLURM_JOB_ID", "SLURM_JOBID")
    return Launch(
        nnodes=nodes,
        nproc_per_node=nproc,
        node_rank=_integer(environ, "SLURM_NODEID"),
        master_addr=slurm_hostnames(nodelist)[0],
        master_port=RENDEZVOUS_PORTS.start + job_id % len(RENDEZVOUS_PORTS),
    )


def srun_command(nodes: int, gpus_per_node: int) -> list[str]:
    """The srun prefix that starts one per-node launcher on each node of the job.

    ``--overlap`` lets it share the resources of the job step it is started from (the step
    that runs the workflow's job). ``--kill-on-bad-exit`` ends every node's launcher as soon
    as one fails or is killed: this, not a timeout, is what keeps the others from waiting
    for a dead peer (training's collective timeout, ``ddp_timeout``, is days long, as a
    ZeRO-3 save needs). ``--label`` starts each line of the log with the node's task number.
    """
    command = [
        "srun",
        f"--nodes={nodes}",
        f"--ntasks={nodes}",
        "--ntasks-per-node=1",
        "--overlap",
        "--kill-on-bad-exit=1",
        "--label",
    ]
    if gpus_per_node:
        command.append(f"--gpus-per-node={gpus_per_node}")
    return command


_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")


def slurm_hostnames(nodelist: str) -> list[str]:
    """Expand SLURM's compressed node list: ``gpu[01-03,07],login1`` -> gpu01 gpu02 gpu03 gpu07 login1.

    Zero padding is kept as SLURM writes it (``[08-10]`` -> 08, 09, 10). Only one bracket
    group per name is supported, which is what SLURM prints for flat host names.
    """
    hosts: list[str] = []
    for item in _split_top_level(nodelist):
        match = re.fullmatch(r"([^\[\]]*)\[([^\[\]]+)\]([^\[\]]*)", item)
        if not match:
            if "[" in item or "]" in item or not item:
                raise LaunchError(f"cannot read the SLURM node list {nodelist!r} (at {item!r})")
            hosts.append(item)
            continue
        prefix, ranges, suffix = match.groups()
        for part in ranges.split(","):
            bounds = _RANGE.match(part)
            if not bounds:
                raise LaunchError(f"cannot read the SLURM node list {nodelist!r} (range {part!r})")
            first, last = bounds.group(1), bounds.group(2) or bounds.group(1)
            if int(last) < int(first):
                raise LaunchError(f"cannot read the SLURM node list {nodelist!r} (range {part!r} runs backwards)")
            width = len(first)
            hosts.extend(f"{prefix}{number:0{width}d}{suffix}" for number in range(int(first), int(last) + 1))
    return hosts


def _split_top_level(nodelist: str) -> list[str]:
    """Split at the commas that are not inside brackets."""
    items, depth, current = [], 0, ""
    for char in nodelist.strip():
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items]


def _integer(environ: Mapping[str, str], *names: str) -> int:
    for name in names:
        value = environ.get(name)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                raise LaunchError(f"{name}={value!r} is not a whole number") from None
    raise LaunchError(f"{' or '.join(names)} is not set: a multi-node launch must run inside a SLURM job")
