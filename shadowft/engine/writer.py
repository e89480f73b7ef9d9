"""Writing (sharded) safetensors in bounded memory.

The whole output layout (shards, headers, offsets) is planned before the first
byte, so worker threads write chunks at their final offsets in any order and
never hold a whole tensor.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowft.engine.dtypes import STORAGE
from shadowft.engine.layout import CheckpointError
from shadowft.io import atomic_write_json

# The most bytes one pwrite copies. Writes to one file take its inode lock, and a thread that
# waits for it spins while the other copies: 4 MiB pieces (a float32 block of 2^20 elements)
# tripled extract-delta's system time (1.3 -> 3.5 s at speed/graft.py's 1x), 1 MiB pieces did not.
WRITE_BYTES = 1 << 20


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as '5GB', '500MB', '2GiB' (GB = 10^9, as transformers)."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*", str(size), re.IGNORECASE)
        if not match:
            raise CheckpointError(f"cannot read size {size!r}: use e.g. 5GB, 500MB or a byte count")
        unit = (match.group(2) or "B").upper().rstrip("B") or "B"
        scale = {
            "B": 1,
            "K": 10**3,
            "M": 10**6,
            "G": 10**9,
            "T": 10**12,
            "KI": 2**10,
            "MI": 2**20,
            "GI": 2**30,
            "TI": 2**40,
        }[unit]
        value = int(float(match.group(1)) * scale)
    if value <= 0:
        raise CheckpointError(f"size must be positive, got {size!r}")
    return value


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def output_tensor(name: str, dtype: str, shape: tuple[int, ...]) -> OutputTensor:
    return OutputTensor(name, dtype, tuple(shape), math.prod(shape) * STORAGE[dtype].itemsize)


class SafetensorsWriter:
    """Writes planned tensors into (sharded) safetensors files at precomputed offsets.

    Shards follow transformers' names: ``{prefix}.safetensors`` when one file is
    enough, else ``{prefix}-00001-of-0000N.safetensors`` plus
    ``{prefix}.safetensors.index.json``. A tensor larger than the shard limit
    gets a shard of its own. ``write`` is safe to call from several threads.
    """

    def __init__(
        self, directory: Path, tensors: list[OutputTensor], *, prefix: str = "model", max_shard_bytes: int = 5 * 10**9
    ):
        self.directory = Path(directory)
        self.prefix = prefix
        shards: list[list[OutputTensor]] = [[]]
        shard_bytes = 0
        for tensor in tensors:
            if shards[-1] and shard_bytes + tensor.nbytes > max_shard_bytes:
                shards.append([])
                shard_bytes = 0
            shards[-1].append(tensor)
            shard_bytes += tensor.nbytes
        count = len(shards)
        self.file_names = (
            [f"{prefix}.safetensors"]
            if count == 1
            else [f"{prefix}-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]
        )
        self.index_names = [f"{prefix}.safetensors.index.json"] if count > 1 else []
        self.weight_map = {t.name: self.file_names[i] for i, shard in enumerate(shards) for t in shard}
        self.total_bytes = sum(t.nbytes for t in tensors)
        self._headers: list[bytes] = []
        self._locations: dict[str, tuple[int, int]] = {}
        for shard_index, shard in enumerate(shards):
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            positions, position = {}, 0
            for tensor in shard:
                header[tensor.name] = {
                    "dtype": tensor.dtype,
                    "shape": list(tensor.shape),
                    "data_offsets": [position, position + tensor.nbytes],
                }
                positions[tensor.name] = position
                position += tensor.nbytes
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)  # data aligned to 8 bytes, as safetensors does
            self._headers.append(encoded)
            for name, position in positions.items():
                self._locations[name] = (shard_index, 8 + len(encoded) + position)
        self._fds: list[int] = []

    def __enter__(self) -> SafetensorsWriter:
        for name, header in zip(self.file_names, self._headers, strict=True):
            fd = os.open(self.directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            self._fds.append(fd)
            os.pwrite(fd, len(header).to_bytes(8, "little") + header, 0)
        return self

    def write(self, name: str, byte_start: int, data: memoryview) -> None:
        shard_index, offset = self._locations[name]
        fd, offset = self._fds[shard_index], offset + byte_start
        while data:
            n = os.pwrite(fd, data[:WRITE_BYTES], offset)
            data, offset = data[n:], offset + n

    def __exit__(self, exc_type: object, *exc: object) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if exc_type is None and self.index_names:
            atomic_write_json(
                self.directory / self.index_names[0],
                {"metadata": {"total_size": self.total_bytes}, "weight_map": self.weight_map},
            )
