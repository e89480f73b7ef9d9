"""The one streaming skeleton that extract (`Delta.save`) and graft both run.

Guard the inputs, start hashing them, open the atomic output directory, plan
the writer, stream every task through the thread pool under a progress bar,
then let the caller finish the directory and write its manifest. Whatever
fails, the output directory does not appear and the hashing stops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowft.engine.numerics import CHUNK_ELEMENTS, Scratch, check_chunk_elements
from shadowft.engine.parallel import progress_bar, run_tasks
from shadowft.engine.provenance import Provenance
from shadowft.engine.tensors import TensorInfo
from shadowft.engine.writer import OutputTensor, SafetensorsWriter, parse_size
from shadowft.io import atomic_directory, atomic_write_json

Task = Callable[[Scratch], int]  # streams one block, returns the bytes it wrote


@dataclass(frozen=True)
class WriteOptions:
    """How an output is streamed: shard size, threads, progress bar, block size (see check_chunk_elements)."""

    max_shard_size: int | str = "5GB"
    threads: int | None = None
    progress: bool = True
    chunk_elements: int = CHUNK_ELEMENTS

    def __post_init__(self) -> None:
        check_chunk_elements(self.chunk_elements)
        parse_size(self.max_shard_size)

    @property
    def max_shard_bytes(self) -> int:
        return parse_size(self.max_shard_size)


@dataclass(frozen=True)
class StreamPlan:
    """One output directory: its tensors, the tasks that write them, and how its manifest is made."""

    outputs: list[OutputTensor]
    tasks: Callable[[SafetensorsWriter], Iterable[Task]]
    prefix: str  # shard names: {prefix}.safetensors or {prefix}-0000i-of-0000n.safetensors
    description: str  # the progress bar's label
    manifest_name: str
    # finish(tmp directory, writer, input digests by role) -> manifest; may add files to tmp
    finish: Callable[[Path, SafetensorsWriter, dict[str, dict[str, Any]]], dict[str, Any]]


def stream(out: Path, plan: StreamPlan, provenance: Provenance, options: WriteOptions) -> dict[str, Any]:
    """Write `plan` to `out` atomically from the inputs in `provenance`; return the manifest."""
    provenance.refuse_as_output(Path(out))
    max_shard_bytes = options.max_shard_bytes
    digests = provenance.start_hashing()
    try:
        with atomic_directory(Path(out)) as tmp:
            writer = SafetensorsWriter(tmp, plan.outputs, prefix=plan.prefix, max_shard_bytes=max_shard_bytes)
            with writer, progress_bar(writer.total_bytes, plan.description, options.progress) as bar:
                run_tasks(
                    plan.tasks(writer),
                    threads=options.threads,
                    on_result=bar.update,
                    chunk_elements=options.chunk_elements,
                )
            manifest = plan.finish(tmp, writer, digests.describe())
            atomic_write_json(tmp / plan.manifest_name, manifest)
    finally:
        digests.cancel()
    return manifest


def copy_bytes(info: TensorInfo, byte0: int, byte1: int, writer: SafetensorsWriter, name: str, scratch: Scratch) -> int:
    """Copy bytes [byte0, byte1) of a tensor unchanged to the output tensor `name`."""
    writer.write(name, byte0, scratch.view(info, byte0, byte1 - byte0))
    return byte1 - byte0
