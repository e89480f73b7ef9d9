"""Parallel execution and progress: a bounded thread pool over streamed tasks, and a byte progress bar."""

from __future__ import annotations

import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from shadowft.engine.numerics import CHUNK_ELEMENTS, Scratch

#: Chunks per worker task batch: a batch's chunks are consecutive, so one mapped window serves all of them.
TASK_CHUNKS = 8


def default_threads() -> int:
    """CPUs this process may use (honours affinity masks such as SLURM's), at most 8."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(8, available))


def run_tasks(
    tasks: Iterable[Callable[[Scratch], Any]],
    *,
    threads: int | None = None,
    on_result: Callable[[Any], None] = lambda result: None,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> None:
    """Run `task(scratch)` for every task on a thread pool, each thread with its own Scratch.

    Each Scratch holds buffers of `chunk_elements`, the largest block the
    tasks were split into.

    numpy (including the page faults of mapped reads inside its loops) and
    os.pwrite release the GIL, so threads overlap reads, arithmetic and
    writes. Consecutive tasks run in batches of TASK_CHUNKS on one thread, so
    its mapped windows serve the whole batch. At most two batches per thread
    are queued, so a huge task list never sits in memory. The first failure
    cancels the rest and is raised; `on_result` runs in the calling thread.
    """
    threads = threads or default_threads()
    local = threading.local()
    scratches: list[Scratch] = []

    def run(batch: list[Callable[[Scratch], Any]]) -> list[Any]:
        if not hasattr(local, "scratch"):
            local.scratch = Scratch(chunk_elements)
            scratches.append(local.scratch)
        return [task(local.scratch) for task in batch]

    def collect(done: set[Future]) -> None:
        for future in done:
            for result in future.result():
                on_result(result)

    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="shadowft")
    pending: set[Future] = set()
    try:
        for batch in _batched(tasks, TASK_CHUNKS):
            if len(pending) >= 2 * threads:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                collect(done)
            pending.add(pool.submit(run, batch))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            collect(done)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for scratch in scratches:
            scratch.close()


def _batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    iterator = iter(items)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def progress_bar(total: int, description: str, enabled: bool):
    """A tqdm bar over bytes on stderr (a silent stand-in when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
