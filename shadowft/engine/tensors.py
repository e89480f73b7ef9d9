"""Where one tensor's bytes are: the record the reader makes for every tensor, whichever kind of file holds it.

Its own module so that the safetensors reader and the pickle path both import it and
neither imports the other's module.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowft.engine.dtypes import FLOAT_DTYPES, itemsize


@dataclass(frozen=True, eq=False)
class TensorInfo:
    """Where one tensor's bytes are: file, absolute byte offset, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Any  # reader's safetensors file, or a pickled.PickleShard
    offset: int
    nbytes: int
    key: str | None = None  # the tensor's name inside a pickle shard

    @property
    def path(self) -> Path:
        return self.source.path

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def rows(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def cols(self) -> int:
        """Elements per row: a 1-D tensor is a column (rows of one element)."""
        return math.prod(self.shape[1:])

    @property
    def itemsize(self) -> int:
        return itemsize(self.dtype)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def window(self, byte_start: int, nbytes: int) -> contextlib.AbstractContextManager[memoryview]:
        """A read-only view of `nbytes` bytes of this tensor's data from `byte_start`, valid inside `with`."""
        if self.key is None:
            return self.source.window(self.offset + byte_start, nbytes)
        return self.source.window(byte_start, nbytes, self.key)
