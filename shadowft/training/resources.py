"""How large a job must be: GPUs, nodes, memory and wall time, sized from the model it works on.

The workflow asks SLURM (or the local scheduler) for what each job needs, computed here
from the model's parameter count, read from its checkpoint, and from the kind of work.
The numbers are estimates with stated assumptions, not measurements of a given cluster;
a profile's ``set-resources`` overrides any of them for one rule.

GPU memory, per GPU, must hold the model state plus an activation reserve, within
``USABLE_GPU_FRACTION`` of the card:

- full fine-tuning shards about 18 bytes per parameter across the GPUs (DeepSpeed ZeRO-3:
  bf16 weights and gradients, fp32 master weights and two Adam moments, plus buffers);
- LoRA keeps the bf16 base weights (2 bytes per parameter) on every GPU, and shards them
  with ZeRO-3 only when one GPU cannot hold them;
- evaluation holds the bf16 weights (2 bytes per parameter) plus the KV cache;
- DPO is training of the same tuning plus its reference model: full DPO holds a frozen copy
  of the model (2 more bytes per parameter, sharded like the rest under ZeRO-3, and one more
  model on the host); LoRA DPO's reference is the same weights with the adapter switched
  off, so it costs no memory. Both run the reference forward over every pair (2 FLOP per
  parameter and token more).

The reserve grows with the model (hidden size and depth grow with it):
``reserve_base + reserve_per_billion * billions``. For training it holds the checkpointed
layer inputs and the fp32 logits of a 2 x 4096-token micro-batch (about 8 GiB for an 8 B
model, 20 GiB for 70 B); for evaluation the KV cache of a batch of 8 long generations.
Full fine-tuning may span several nodes (ZeRO-3); LoRA and evaluation stay on one. A job
that no node of the cluster can hold is refused here, before it is submitted, with a
message that names the model and the node:
SLURM itself would keep an unsatisfiable CPU request pending forever, without a word.

Wall time is estimated from the compute: ``flops_per_token * parameters * tokens`` at
``GPU_FLOPS`` per GPU, doubled for safety, plus start-up, and multiplied by the attempt
number, so a retried job gets more time (training resumes from its last checkpoint, so a
job cut off by the limit loses at most one checkpoint interval). Host memory also grows
with the attempt, up to what a node has.
"""

from __future__ import annotations

import enum
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shadowft.engine.layout import PICKLE_SUFFIXES, CheckpointError
from shadowft.engine.reader import Checkpoint

MIB = 1 << 20
GIB = 1 << 30
USABLE_GPU_FRACTION = 0.9
# Effective bf16 throughput of one GPU in training or generation, well below any data-centre
# GPU's peak (an A100 peaks at 312 TFLOP/s; 30-40 % of it is usual for LLM fine-tuning).
GPU_FLOPS = 1.0e14
TIME_SAFETY_FACTOR = 2.0
# Byte-level BPE vocabularies average about 4 bytes of JSON text per token; fewer tokens
# would mean a shorter run, so this errs towards more time.
DATASET_BYTES_PER_TOKEN = 3.0
# The CPU-side work of the delta engine (extract, graft, similarity): streamed in chunks,
# its resident memory stays near 128 MB whatever the model (measured), so 2 GiB is ample.
ENGINE_MEM_MB = 2048
ENGINE_THREADS = 4
# Reading and writing model-sized files on a cluster file system.
ENGINE_BYTES_PER_SECOND = 100e6


class SizingError(ValueError):
    """No node of the cluster can run the job; the message names the model and the node."""


class Workload(enum.Enum):
    """What a job does with its model, which decides how memory and time scale."""

    TRAIN_FULL = "train_full"
    TRAIN_LORA = "train_lora"
    DPO_FULL = "dpo_full"
    DPO_LORA = "dpo_lora"
    EVALUATE = "evaluate"
    MERGE = "merge"  # a LoRA adapter merged into its model, on the CPU
    ENGINE = "engine"  # shadowft's own streaming delta engine, on the CPU

    @classmethod
    def training(cls, tuning: str, stage: str = "sft") -> Workload:
        """The workload of a training run: its tuning, and whether DPO adds a reference model."""
        if stage == "dpo":
            return {"full": cls.DPO_FULL, "lora": cls.DPO_LORA}[tuning]
        return {"full": cls.TRAIN_FULL, "lora": cls.TRAIN_LORA}[tuning]

    @property
    def is_training(self) -> bool:
        return self not in (Workload.EVALUATE, Workload.MERGE, Workload.ENGINE)

    @property
    def uses_gpus(self) -> bool:
        return SCALING[self].gpu_bytes_per_parameter > 0

    @property
    def is_full_training(self) -> bool:
        """Full-parameter training: its state is sharded over GPUs and may span nodes."""
        return self in (Workload.TRAIN_FULL, Workload.DPO_FULL)


@dataclass(frozen=True)
class Scaling:
    """Per-workload constants of the estimates (see the module docstring)."""

    gpu_bytes_per_parameter: float  # model state held in GPU memory
    reserve_base_gib: float  # activations / KV cache at any size
    reserve_per_billion_gib: float
    flops_per_token: float  # per parameter; 0 for work that is I/O rather than compute
    startup_minutes: int
    host_base_gib: float  # host memory of a node: this, plus the two below
    host_per_gpu_gib: float  # each GPU's process (CUDA context, libraries, data loader)
    host_bytes_per_parameter: float  # the model loaded or gathered on the host


SCALING: dict[Workload, Scaling] = {
    # Forward 2, backward 4, recomputation under gradient checkpointing 2 (LLaMA-Factory's default).
    # The host gathers the whole bf16 model when ZeRO-3 saves it, twice over for safety.
    Workload.TRAIN_FULL: Scaling(18.0, 6.0, 0.2, 8.0, 20, 4.0, 4.0, 4.0),
    # No weight gradients: forward 2, activation gradients 2, recomputation 2.
    Workload.TRAIN_LORA: Scaling(2.0, 6.0, 0.2, 6.0, 20, 4.0, 4.0, 4.0),
    # Full DPO: the frozen reference copy in bf16 (2 bytes) and its forward pass (2 FLOP).
    Workload.DPO_FULL: Scaling(20.0, 6.0, 0.2, 10.0, 20, 4.0, 4.0, 6.0),
    # LoRA DPO: the reference is the base weights without the adapter; only its forward costs.
    Workload.DPO_LORA: Scaling(2.0, 6.0, 0.2, 8.0, 20, 4.0, 4.0, 4.0),
    # The model loads on the host before it moves to the GPUs.
    Workload.EVALUATE: Scaling(2.0, 6.0, 0.25, 2.0, 15, 4.0, 4.0, 2.0),
    # Base weights and the merged copy, both in the host's memory.
    Workload.MERGE: Scaling(0.0, 0.0, 0.0, 0.0, 15, 4.0, 0.0, 6.0),
    Workload.ENGINE: Scaling(0.0, 0.0, 0.0, 0.0, 10, ENGINE_MEM_MB / 1024, 0.0, 0.0),
}


@dataclass(frozen=True)
class Node:
    """What one node offers, as the SLURM profile describes it (or this machine, locally)."""

    gpus: int
    cpus: int
    mem_mb: int
    gpu_mem_mb: int = 0
    max_nodes: int = 1
    max_runtime: int | None = None  # minutes; None: no limit

    def __post_init__(self) -> None:
        for field in ("gpus", "cpus", "mem_mb", "gpu_mem_mb", "max_nodes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"node {field}: {value!r} must be a whole number >= 0")
        if self.cpus < 1 or self.max_nodes < 1:
            raise ValueError(f"node: cpus and max_nodes must be >= 1 (got {self.cpus}, {self.max_nodes})")
        if self.gpus and not self.gpu_mem_mb:
            raise ValueError("node: a node with GPUs must say how much memory each has (node_gpu_mem_mb)")

    @property
    def cpus_per_gpu(self) -> int:
        """A GPU job's fair share of the node's CPUs for each of its GPUs."""
        return max(1, self.cpus // max(self.gpus, 1))

    def describe(self) -> str:
        gpus = f"{self.gpus} GPU(s) of {self.gpu_mem_mb} MB" if self.gpus else "no GPU"
        return f"a node with {gpus}, {self.cpus} CPUs and {self.mem_mb} MB (at most {self.max_nodes} node(s) a job)"


@dataclass(frozen=True)
class JobResources:
    """What one job asks for, in the SLURM executor's terms: ``gpu`` GPUs in all, spread
    evenly over ``nodes`` nodes (sbatch --gpus with --nodes), ``mem_mb`` on each node."""

    gpu: int
    nodes: int
    mem_mb: int
    runtime: int  # minutes

    @property
    def gpus_per_node(self) -> int:
        return self.gpu // self.nodes


def size_job(
    workload: Workload,
    parameters: int,
    node: Node,
    *,
    attempt: int = 1,
    tokens: float = 0.0,
    gpu: int | None = None,
    nodes: int | None = None,
) -> JobResources:
    """The resources of one job of `workload` on a model of `parameters`, run on `node`.

    `tokens` is what the job processes (training: dataset tokens times epochs; evaluation:
    tokens generated), used for the wall-time estimate. `gpu` and `nodes` are the spread a
    profile asks for (its ``set-resources``), either one or both, in place of the estimate's:
    the job's memory and time are then sized for that spread. Raises SizingError when no
    allowed number of `node`s can hold the job, or the spread asked for.
    """
    if parameters < 1:
        raise ValueError(f"parameters: {parameters!r} must be >= 1")
    if attempt < 1:
        raise ValueError(f"attempt: {attempt!r} must be >= 1")
    scaling = SCALING[workload]
    total_gpus = _gpus_needed(workload, scaling, parameters, node)
    if gpu is not None or nodes is not None:
        gpus_per_node, nodes = _requested_spread(workload, total_gpus, node, gpu, nodes)
        total_gpus = gpus_per_node * nodes
    else:
        nodes = math.ceil(total_gpus / node.gpus) if total_gpus else 1
        gpus_per_node = math.ceil(total_gpus / nodes) if total_gpus else 0
        if nodes > node.max_nodes:
            raise SizingError(
                f"{workload.value} of a {_billions(parameters)} model needs {total_gpus} GPUs "
                f"({nodes} nodes), but the profile allows {node.describe()}; allow more nodes "
                "(max_nodes) or use GPUs with more memory"
            )
    host_bytes = attempt * (
        (scaling.host_base_gib + scaling.host_per_gpu_gib * gpus_per_node) * GIB
        + scaling.host_bytes_per_parameter * parameters
    )
    mem_mb = math.ceil(host_bytes / MIB)
    if mem_mb > node.mem_mb:
        if attempt == 1:
            raise SizingError(
                f"{workload.value} of a {_billions(parameters)} model needs {mem_mb} MB of host memory "
                f"per node, but the profile describes {node.describe()}"
            )
        mem_mb = node.mem_mb  # a retry asks for all there is, not for the impossible
    return JobResources(
        gpu=gpus_per_node * nodes,
        nodes=nodes,
        mem_mb=mem_mb,
        runtime=_runtime_minutes(workload, scaling, parameters, tokens, max(total_gpus, 1), attempt, node),
    )


def _requested_spread(
    workload: Workload, needed: int, node: Node, gpu: int | None, nodes: int | None
) -> tuple[int, int]:
    """(GPUs per node, nodes) of the spread a profile asks for, once a node of it can hold them.

    Left out, `nodes` is as many as `gpu` GPUs need, and `gpu` the estimate's GPUs spread over
    `nodes`. Only training spans nodes (one launcher per node); the GPUs spread evenly, as
    torchrun starts the same number of processes on every node.
    """
    for name, value in (("gpu", gpu), ("nodes", nodes)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise SizingError(f"set-resources: {workload.value}'s {name} {value!r} must be a whole number >= 0")
    if nodes == 0:
        raise SizingError(f"set-resources asks {workload.value} for 0 nodes: a job runs on at least one")
    if nodes is None:
        nodes = math.ceil(gpu / node.gpus) if gpu and node.gpus else 1
    if gpu is None:
        gpu = nodes * math.ceil(needed / nodes)
    asked = f"set-resources asks {workload.value} for {gpu} GPU(s) over {nodes} node(s)"
    if nodes > 1 and not workload.is_training:
        raise SizingError(f"{asked}, but only training spans nodes")
    if gpu % nodes:
        raise SizingError(f"{asked}: the GPUs must spread evenly, as a multiple of the nodes")
    if nodes > node.max_nodes or gpu // nodes > node.gpus:
        raise SizingError(f"{asked}, but the profile allows {node.describe()}")
    return gpu // nodes, nodes


def _gpus_needed(workload: Workload, scaling: Scaling, parameters: int, node: Node) -> int:
    if not scaling.gpu_bytes_per_parameter or not node.gpus:
        return 0
    usable = USABLE_GPU_FRACTION * node.gpu_mem_mb * MIB
    reserve = _reserve_bytes(scaling, parameters)
    if reserve >= usable:
        raise SizingError(
            f"{workload.value} of a {_billions(parameters)} model needs {reserve / GIB:.0f} GiB per GPU for "
            f"activations alone, but the profile describes {node.describe()}"
        )
    state = scaling.gpu_bytes_per_parameter * parameters
    # Replicated state (LoRA's base weights, inference) fits one GPU or is sharded (ZeRO-3).
    if not workload.is_full_training and fits_one_gpu(workload, parameters, node.gpu_mem_mb):
        return 1
    gpus = math.ceil(state / (usable - reserve))
    if not workload.is_full_training and gpus > node.gpus:
        raise SizingError(
            f"{workload.value} of a {_billions(parameters)} model needs {gpus} GPUs on one node, "
            f"but the profile describes {node.describe()}"
        )
    return max(gpus, 1)


def fits_one_gpu(workload: Workload, parameters: int, gpu_mem_mb: int) -> bool:
    """Whether one GPU of `gpu_mem_mb` holds the replicated state and reserve of `workload`."""
    scaling = SCALING[workload]
    needed = scaling.gpu_bytes_per_parameter * parameters + _reserve_bytes(scaling, parameters)
    return needed <= USABLE_GPU_FRACTION * gpu_mem_mb * MIB


def _reserve_bytes(scaling: Scaling, parameters: int) -> float:
    return (scaling.reserve_base_gib + scaling.reserve_per_billion_gib * parameters / 1e9) * GIB


def _runtime_minutes(
    workload: Workload, scaling: Scaling, parameters: int, tokens: float, gpus: int, attempt: int, node: Node
) -> int:
    if scaling.flops_per_token:
        seconds = scaling.flops_per_token * parameters * tokens / (gpus * GPU_FLOPS)
    else:  # I/O: read and write the model a few times
        seconds = 3 * 2 * parameters / ENGINE_BYTES_PER_SECOND
    minutes = (scaling.startup_minutes + math.ceil(TIME_SAFETY_FACTOR * seconds / 60)) * attempt
    return min(minutes, node.max_runtime) if node.max_runtime else minutes


def _billions(parameters: int) -> str:
    return f"{parameters / 1e9:.2f} B-parameter"


def count_parameters(model_dir: Path) -> int:
    """The number of parameters stored in a model folder, read from its safetensors headers.

    A folder of pickle weights is not unpickled to count them (loading pickle runs code):
    its weight bytes are counted at 2 bytes a parameter, which overestimates an fp32 file.
    """
    model_dir = Path(model_dir)
    try:
        with Checkpoint(model_dir) as checkpoint:
            return sum(info.numel for info in checkpoint.tensors.values())
    except CheckpointError as error:
        pickles = [path for path in model_dir.glob("*") if path.suffix in PICKLE_SUFFIXES]
        if not pickles:
            raise CheckpointError(f"cannot size jobs for {model_dir}: {error}") from None
        return sum(path.stat().st_size for path in pickles) // 2


def dataset_tokens(dataset_dir: Path) -> float:
    """An estimate of the tokens in a LLaMA-Factory dataset folder, from the size of its files."""
    total = 0
    for root, _, files in os.walk(dataset_dir):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total / DATASET_BYTES_PER_TOKEN


# The default-resources keys a profile describes its nodes with, and the Node fields they fill.
NODE_RESOURCE_KEYS = {
    "node_gpus": "gpus",
    "node_cpus": "cpus",
    "node_mem_mb": "mem_mb",
    "node_gpu_mem_mb": "gpu_mem_mb",
    "max_nodes": "max_nodes",
    "max_runtime": "max_runtime",
}


def node_from_resources(values: Mapping[str, int]) -> Node | None:
    """The node a profile describes in its ``default-resources`` (``node_*`` keys), or None.

    A profile either describes its node completely (node_gpus, node_cpus, node_mem_mb, and
    node_gpu_mem_mb when it has GPUs; max_nodes and max_runtime are optional) or not at all.
    """
    present = {key: values[key] for key in NODE_RESOURCE_KEYS if key in values}
    if not present:
        return None
    missing = sorted({"node_gpus", "node_cpus", "node_mem_mb"} - present.keys())
    if missing:
        raise ValueError(
            f"default-resources: {', '.join(missing)} missing; a profile that describes its node "
            "gives node_gpus, node_cpus and node_mem_mb (and node_gpu_mem_mb for GPU nodes)"
        )
    return Node(**{NODE_RESOURCE_KEYS[key]: value for key, value in present.items()})


def local_node() -> Node:
    """This machine as a node: its CPUs and memory, and the NVIDIA GPUs it lets this process see."""
    mem_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // MIB
    gpus = _visible_gpus()
    return Node(gpus=gpus, cpus=os.cpu_count() or 1, mem_mb=mem_mb, gpu_mem_mb=_gpu_memory_mb() if gpus else 0)


def _visible_gpus() -> int:
    devices = sorted(Path("/dev").glob("nvidia[0-9]*"))
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return len(devices)
    return min(len([part for part in visible.split(",") if part.strip() and part.strip() != "-1"]), len(devices))


def _gpu_memory_mb() -> int:
    import subprocess

    try:
        output = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return min(int(line) for line in output.split())
    except (OSError, subprocess.SubprocessError, ValueError):
        # No nvidia-smi to ask: assume the smallest data-centre card still in use.
        return 16 * 1024
