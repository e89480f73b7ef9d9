"""How a delta is represented: per tensor, a sum of dense and low-rank parts, each filling a block."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from shadowft.engine.numerics import Block, Scratch, read_float
from shadowft.engine.tensors import TensorInfo


@dataclass(frozen=True, eq=False)
class FullPart:
    """A dense update: (minuend - subtrahend) * scale, each factor optional but the first."""

    minuend: TensorInfo
    subtrahend: TensorInfo | None = None
    scale: float | None = None

    @property
    def dtypes(self) -> tuple[str, ...]:
        return (self.minuend.dtype,) + ((self.subtrahend.dtype,) if self.subtrahend else ())

    def fill(self, block: Block, out: np.ndarray, scratch: Scratch) -> None:
        read_float(self.minuend, block.start, out, scratch)
        if self.subtrahend is not None:
            other = scratch.work(2, len(out), out.dtype)
            np.subtract(out, read_float(self.subtrahend, block.start, other, scratch), out=out)
        if self.scale is not None:
            np.multiply(out, out.dtype.type(self.scale), out=out)


@dataclass(frozen=True, eq=False)
class LoraPart:
    """A low-rank update s * B @ A, computed a block of rows at a time.

    `transposed` is PEFT's layout for embeddings and fan_in_fan_out (Conv1D)
    layers, whose update is (B @ A).T = A.T @ B.T: there A's columns index the
    rows of the update and B's rows index its columns.
    """

    a: TensorInfo
    b: TensorInfo
    scale: float
    transposed: bool = False

    @property
    def rank(self) -> int:
        return self.a.shape[0]

    @property
    def shape(self) -> tuple[int, int]:
        """Shape of the update this part produces."""
        if self.transposed:
            return (self.a.shape[1], self.b.shape[0])
        return (self.b.shape[0], self.a.shape[1])

    @property
    def dtypes(self) -> tuple[str, ...]:
        return (self.a.dtype, self.b.dtype)

    def fill(self, block: Block, out: np.ndarray, scratch: Scratch) -> None:
        dtype = out.dtype
        cached = scratch.cache.get("lora_columns")
        if cached is None or cached[0] is not self:
            cached = (self, self._column_factor(dtype, scratch))
            scratch.cache["lora_columns"] = cached
        columns = cached[1][:, block.col0 : block.col1]
        np.matmul(self._row_factor(block, dtype, scratch), columns, out=out.reshape(block.shape))
        np.multiply(out, dtype.type(self.scale), out=out)

    def _column_factor(self, dtype: np.dtype, scratch: Scratch) -> np.ndarray:
        """The [rank, cols] factor, whole (small: rank x one dimension of the weight)."""
        if self.transposed:
            stored = _read_float_array(self.b, dtype, scratch).reshape(self.b.shape)
            return np.ascontiguousarray(stored.T)
        return _read_float_array(self.a, dtype, scratch).reshape(self.a.shape)

    def _row_factor(self, block: Block, dtype: np.dtype, scratch: Scratch) -> np.ndarray:
        """Rows [row0, row1) of the [rows, rank] factor."""
        count, rank = block.row1 - block.row0, self.rank
        buffer = (
            scratch.work(2, count * rank, dtype) if count * rank <= scratch.chunk else np.empty(count * rank, dtype)
        )
        if not self.transposed:
            read_float(self.b, block.row0 * rank, buffer, scratch)
            return buffer.reshape(count, rank)
        length = self.a.shape[1]
        for k in range(rank):
            read_float(self.a, k * length + block.row0, buffer[k * count : (k + 1) * count], scratch)
        return buffer.reshape(rank, count).T


def _read_float_array(info: TensorInfo, dtype: np.dtype, scratch: Scratch) -> np.ndarray:
    out = np.empty(info.numel, dtype)
    for start in range(0, info.numel, scratch.chunk):
        read_float(info, start, out[start : start + scratch.chunk], scratch)
    return out


@dataclass(frozen=True, eq=False)
class DeltaEntry:
    """The update of one tensor: the sum of its parts over its first `shape[0]` rows."""

    name: str
    shape: tuple[int, ...]
    parts: tuple[FullPart | LoraPart, ...]

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def cols(self) -> int:
        """Elements per row (1 for a 1-D update)."""
        return math.prod(self.shape[1:])

    @property
    def dtypes(self) -> tuple[str, ...]:
        return tuple(code for part in self.parts for code in part.dtypes)

    def fill(self, block: Block, out: np.ndarray, scratch: Scratch) -> None:
        """The update over `block` into `out`."""
        self.parts[0].fill(block, out, scratch)
        for part in self.parts[1:]:
            extra = np.empty_like(out)
            part.fill(block, extra, scratch)
            np.add(out, extra, out=out)
