"""The exact arithmetic: storage bytes to a float compute buffer and back, a block at a time.

Every element is computed in float32 (float64 when an input is float64) and
rounded once, to nearest even, to the output dtype, exactly like torch.
bfloat16 is converted through its bit pattern with numpy only: importing
torch alone costs about 270 MB of resident memory. Tensors are processed in
`Block`s of whole rows of at most `CHUNK_ELEMENTS` elements, each worker thread
with its own reusable `Scratch` buffers.

This is the general path, for every dtype and every kind of update. The
common case, bfloat16 weights with a dense update, runs in one pass in the
compiled kernels of `shadowft.engine.kernels`, which give the same bytes.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from shadowft.engine.dtypes import STORAGE
from shadowft.engine.layout import CheckpointError
from shadowft.engine.tensors import TensorInfo

#: Elements per streamed chunk. Measured on the 1x speed/graft.py triple with two threads, first
#: grafts: with the compiled kernels (shadowft.engine.kernels) 1.6-1.7 s at 2^20 and 2^21, 1.8-1.9 s at
#: 2^19, 2.1-2.2 s at 2^18. For the numpy path, whose every call releases and retakes the GIL,
#: smaller blocks cost more (4.7-4.9 s at 2^18 cut into passes of 2^17, against 2.8-3.3 s at 2^20,
#: before the kernels); see docs/speed.md. The engine's entry points take it as `chunk_elements`
#: (see check_chunk_elements).
CHUNK_ELEMENTS = 1 << 20
_OPEN_WINDOWS = 4  # per thread: the inputs of one graft, plus one


def check_chunk_elements(chunk_elements: int) -> int:
    """Validate the `chunk_elements` option of the engine's entry points and return it.

    It is the most elements one streamed block holds (default CHUNK_ELEMENTS):
    a tensor is processed in blocks of whole rows, a row longer than that in
    pieces of it. It sets the working memory (about 40 bytes per element per
    thread) and speed, not the arithmetic: every element is computed the same
    way whatever the value (only sums may differ in their last bits: a LoRA
    product if BLAS orders its rank terms differently for another block
    shape, and similarity's per-chunk sums). The tests set it small to run
    the multi-block paths on small tensors.
    """
    if isinstance(chunk_elements, bool) or not isinstance(chunk_elements, int) or chunk_elements < 1:
        raise CheckpointError(f"chunk_elements must be a positive integer, got {chunk_elements!r}")
    return chunk_elements


@dataclass(frozen=True)
class Block:
    """A contiguous run of a tensor's elements, viewed as a (rows, cols) matrix.

    Either whole rows ``[row0, row1)``, or, when a single row is longer than a
    chunk, the columns ``[col0, col1)`` of row ``row0``.
    """

    row0: int
    row1: int
    col0: int
    col1: int
    row_length: int

    @property
    def start(self) -> int:
        return self.row0 * self.row_length + self.col0

    @property
    def count(self) -> int:
        return (self.row1 - self.row0) * (self.col1 - self.col0)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.row1 - self.row0, self.col1 - self.col0)


def blocks(row0: int, row1: int, row_length: int, chunk: int = CHUNK_ELEMENTS) -> Iterator[Block]:
    """Split rows [row0, row1) of a matrix into blocks of at most `chunk` elements (or one row)."""
    if row_length <= chunk:
        step = max(1, chunk // max(row_length, 1))
        for start in range(row0, row1, step):
            yield Block(start, min(start + step, row1), 0, row_length, row_length)
    else:
        for row in range(row0, row1):
            for col in range(0, row_length, chunk):
                yield Block(row, row + 1, col, min(col + chunk, row_length), row_length)


_FLOAT32 = np.dtype(np.float32)
# the bit operations' operands, as numpy scalars so no call converts them
_HALF_BITS = np.uint32(16)
_ONE = np.uint32(1)
_ROUNDING_BIAS = np.uint32(0x7FFF)


class Scratch:
    """One thread's reusable buffers and open input windows: streaming allocates nothing per chunk."""

    def __init__(self, chunk: int = CHUNK_ELEMENTS):
        self.chunk = chunk
        self._work = [np.empty(chunk, np.float64) for _ in range(3)]
        self._bits = np.empty(chunk, np.uint32)
        self._flags = np.empty(chunk, np.bool_)
        self._out = np.empty(chunk * 8, np.uint8)
        self._windows: collections.OrderedDict[Any, Any] = collections.OrderedDict()  # source -> window
        self.cache: dict[Any, Any] = {}  # per-thread memo for callers (e.g. LoRA factors)

    def view(self, info: TensorInfo, byte_start: int, nbytes: int) -> memoryview:
        """Bytes of a tensor's data, from a window this thread keeps mapped while its reads stay inside."""
        if info.key is not None:
            return info.source.view(byte_start, nbytes, info.key)
        offset = info.offset + byte_start
        window = self._windows.get(info.source)
        if window is None or not window.covers(offset, nbytes):
            if window is not None:
                window.close()
            elif len(self._windows) >= _OPEN_WINDOWS:
                self._windows.popitem(last=False)[1].close()
            window = self._windows[info.source] = info.source.map(offset, nbytes)
        self._windows.move_to_end(info.source)
        return window.view(offset, nbytes)

    def close(self) -> None:
        """Unmap this thread's windows."""
        while self._windows:
            self._windows.popitem()[1].close()

    def work(self, index: int, count: int, dtype: np.dtype = _FLOAT32) -> np.ndarray:
        return self._work[index].view(dtype)[:count]

    def out(self, nbytes: int) -> memoryview:
        return memoryview(self._out)[:nbytes]


def compute_dtype(*codes: str) -> np.dtype:
    """float32, or float64 when any input is float64 (fp32 would round it)."""
    return np.dtype(np.float64 if "F64" in codes else np.float32)


def stored(info: TensorInfo, start: int, count: int, scratch: Scratch) -> np.ndarray:
    """Elements [start, start+count) of `info` as stored (bfloat16 as its uint16 bits), read-only."""
    storage = STORAGE[info.dtype]
    return np.frombuffer(scratch.view(info, start * storage.itemsize, count * storage.itemsize), storage)


def read_float(info: TensorInfo, start: int, out: np.ndarray, scratch: Scratch) -> np.ndarray:
    """Fill `out` (float32/64) with elements [start, start+len(out)) of `info`, exactly converted."""
    count = len(out)
    values = stored(info, start, count, scratch)
    if info.dtype != "BF16":
        np.copyto(out, values)
    else:
        # a widening copy then an in-place shift: measured twice as fast as one casting shift
        bits = out.view(np.uint32) if out.dtype == np.float32 else scratch._bits[:count]
        np.copyto(bits, values)
        np.left_shift(bits, _HALF_BITS, out=bits)
        if out.dtype != np.float32:
            np.copyto(out, bits.view(np.float32))
    return out


def encode(values: np.ndarray, code: str, scratch: Scratch) -> memoryview:
    """The bytes of `values` rounded once (to nearest even) to dtype `code`; `values` may be overwritten."""
    storage = STORAGE[code]
    if storage == values.dtype:
        return memoryview(values.view(np.uint8))
    count = len(values)
    out = np.frombuffer(scratch.out(count * storage.itemsize), storage)
    if code != "BF16":
        np.copyto(out, values, casting="unsafe")
        return memoryview(out.view(np.uint8))
    if values.dtype != np.float32:
        raise CheckpointError("rounding float64 to bfloat16 would round twice; choose float32 output")
    # np.minimum propagates NaN: one pass without a write tells whether there is any
    quiet = _quiet_nans(values, scratch) if count and np.isnan(np.minimum.reduce(values)) else None
    bits = _round_to_upper_half(values.view(np.uint32), scratch._bits[:count])
    np.right_shift(bits, _HALF_BITS, out=out, casting="unsafe")  # the top 16 bits, straight into the output
    if quiet is not None:
        nan, nan_bits = quiet
        out[nan] = nan_bits
    return memoryview(out.view(np.uint8))


def _round_to_upper_half(bits: np.ndarray, lowest_kept: np.ndarray) -> np.ndarray:
    """Round float32 `bits` in place to nearest even on their top 16 bits: add 0x7FFF plus the lowest kept bit."""
    np.right_shift(bits, _HALF_BITS, out=lowest_kept)
    np.bitwise_and(lowest_kept, _ONE, out=lowest_kept)
    np.add(bits, _ROUNDING_BIAS, out=bits)
    np.add(bits, lowest_kept, out=bits)
    return bits


def _quiet_nans(values: np.ndarray, scratch: Scratch) -> tuple[np.ndarray, np.ndarray]:
    """Where `values` are NaN, and the bfloat16 each becomes: truncated and kept quiet, since rounding could
    carry a NaN into infinity. Taken before the rounding overwrites `values`."""
    nan = np.isnan(values, out=scratch._flags[: len(values)])
    return nan, (values.view(np.uint32)[nan] >> 16).astype(np.uint16) | 0x0040


def byte_ranges(nbytes: int, chunk_bytes: int = CHUNK_ELEMENTS * 8) -> Iterator[tuple[int, int]]:
    for start in range(0, nbytes, chunk_bytes):
        yield start, min(start + chunk_bytes, nbytes)
