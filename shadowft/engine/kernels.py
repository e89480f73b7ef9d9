"""Fused kernels for the engine's common case: bfloat16 weights, one pass over a block.

The numpy path (`shadowft.engine.numerics`) makes about a dozen passes over every
block: decode each input to float32, subtract, add, look for NaNs, round,
pack. These kernels, compiled by numba, decode, compute and round each element
in a single pass, with the same float32 operations in the same order (numba
compiles without fast-math, so no multiply-add is fused and no subnormal is
flushed), and release the GIL while they run. The bytes are the numpy path's:
tests/test_kernels.py compares the two on every kind of value.

One exception is left to the numpy path: a block whose result holds a NaN.
Which payload an operation on two NaNs keeps depends on the operands' order,
which the compiler may swap, so the kernels only count NaNs, and the caller
redoes such a block with numpy (weights with NaNs are rare; the work is lost,
not the exactness).

The first call of each kernel compiles it (0.1-0.4 s) into numba's cache, in
``__pycache__`` beside this file or, when that is read-only, in the user's
cache directory; later processes load it from there.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from shadowft.engine.dtypes import STORAGE
from shadowft.engine.numerics import Block, Scratch, stored
from shadowft.engine.parts import DeltaEntry, FullPart
from shadowft.engine.tensors import TensorInfo

_BF16 = STORAGE["BF16"]
_F32 = STORAGE["F32"]


@intrinsic
def _float_of_bits(typingctx, bits):  # noqa: ARG001 (numba's intrinsic signature)
    """The float32 whose bit pattern is the uint32 `bits` (numba has no scalar bit cast)."""

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.uint32), codegen


@intrinsic
def _bits_of_float(typingctx, value):  # noqa: ARG001
    """The uint32 bit pattern of the float32 `value`."""

    def codegen(context, builder, signature, args):  # noqa: ARG001
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@njit(nogil=True, cache=True, inline="always")
def _decode(bfloat16):
    return _float_of_bits(np.uint32(bfloat16) << np.uint32(16))


@njit(nogil=True, cache=True, inline="always")
def _round(value):
    """`value` rounded to nearest even on its top 16 bits: the bfloat16 bits (a NaN's are not quiet)."""
    bits = _bits_of_float(value)
    return np.uint16((bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))


@njit(nogil=True, cache=True, boundscheck=False)
def graft_difference(out, instruct, minuend, subtrahend, alpha):
    """out = bf16(instruct + (minuend - subtrahend) * alpha), all bfloat16 bits; returns the NaN count."""
    nans = 0
    for k in range(out.shape[0]):
        value = _decode(instruct[k]) + (_decode(minuend[k]) - _decode(subtrahend[k])) * alpha
        nans += value != value
        out[k] = _round(value)
    return nans


@njit(nogil=True, cache=True, boundscheck=False)
def graft_dense(out, instruct, update, alpha):
    """out = bf16(instruct + update * alpha), `update` float32; returns the NaN count."""
    nans = 0
    for k in range(out.shape[0]):
        value = _decode(instruct[k]) + update[k] * alpha
        nans += value != value
        out[k] = _round(value)
    return nans


@njit(nogil=True, cache=True, boundscheck=False)
def difference(out, minuend, subtrahend):
    """out = minuend - subtrahend in float32, from bfloat16 bits; returns the NaN count."""
    nans = 0
    for k in range(out.shape[0]):
        value = _decode(minuend[k]) - _decode(subtrahend[k])
        nans += value != value
        out[k] = value
    return nans


def _single_part(entry: DeltaEntry | None) -> FullPart | None:
    if entry is None or len(entry.parts) != 1 or not isinstance(entry.parts[0], FullPart):
        return None
    part = entry.parts[0]
    return part if part.scale is None else None


def graft_part(source_dtype: str, out_dtype: str, entry: DeltaEntry | None) -> FullPart | None:
    """The part `graft_block` computes for this tensor: bf16 instruct and output, and either a difference
    of bf16 tensors or a stored float32 update; None when the numpy path must."""
    part = _single_part(entry)
    if part is None or source_dtype != "BF16" or out_dtype != "BF16":
        return None
    if part.subtrahend is None:
        return part if part.minuend.dtype == "F32" else None
    return part if part.minuend.dtype == part.subtrahend.dtype == "BF16" else None


def difference_part(out_dtype: str, entry: DeltaEntry) -> FullPart | None:
    """The part `difference_block` computes: a difference of bf16 tensors stored as float32; else None."""
    part = _single_part(entry)
    if part is None or part.subtrahend is None or out_dtype != "F32":
        return None
    return part if part.minuend.dtype == part.subtrahend.dtype == "BF16" else None


def graft_block(
    instruct: TensorInfo, part: FullPart, block: Block, alpha: float | None, scratch: Scratch
) -> memoryview | None:
    """For a `graft_part`: the bfloat16 bytes of instruct + alpha * part over `block`, or None when the
    result holds a NaN."""
    count, start = block.count, block.start
    out = np.frombuffer(scratch.out(count * _BF16.itemsize), _BF16)
    scale = np.float32(1.0 if alpha is None else alpha)  # a product with 1 is exact
    weights = stored(instruct, start, count, scratch)
    minuend = stored(part.minuend, start, count, scratch)
    if part.subtrahend is None:
        nans = graft_dense(out, weights, minuend, scale)
    else:
        nans = graft_difference(out, weights, minuend, stored(part.subtrahend, start, count, scratch), scale)
    return None if nans else memoryview(out.view(np.uint8))


def difference_block(part: FullPart, block: Block, scratch: Scratch) -> memoryview | None:
    """For a `difference_part`: the float32 bytes of minuend - subtrahend over `block`, or None when it
    holds a NaN."""
    count, start = block.count, block.start
    out = np.frombuffer(scratch.out(count * _F32.itemsize), _F32)
    nans = difference(out, stored(part.minuend, start, count, scratch), stored(part.subtrahend, start, count, scratch))
    return None if nans else memoryview(out.view(np.uint8))
