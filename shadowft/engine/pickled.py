"""Torch pickle shards (``.bin``/``.pt``), read only when the caller allows pickle.

Loading a pickle can run arbitrary code: the engine refuses them unless told
(``allow_pickle``), and then loads with ``torch.load(weights_only=True, mmap=True)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from shadowft.engine.dtypes import TORCH_TO_CODE
from shadowft.engine.layout import CheckpointError
from shadowft.engine.tensors import TensorInfo


class PickleShard:
    """A torch pickle shard, loaded with torch.load(weights_only=True, mmap=True)."""

    def __init__(self, path: Path):
        import torch  # only pickle inputs need torch

        self.path = path
        try:
            state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as exc:  # torch raises many types for unreadable pickles
            raise CheckpointError(f"{path}: cannot load pickle checkpoint ({exc})") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: pickle does not hold a state dict")
        self._bytes: dict[str, np.ndarray] = {}
        self.tensors = {}
        for name, tensor in state.items():
            code = TORCH_TO_CODE.get(str(tensor.dtype).removeprefix("torch."))
            if code is None:
                raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {tensor.dtype}")
            flat = tensor.detach().contiguous().reshape(-1)
            self._bytes[name] = flat.view(torch.uint8).numpy() if flat.numel() else np.empty(0, np.uint8)
            self.tensors[name] = TensorInfo(
                name, code, tuple(tensor.shape), self, 0, self._bytes[name].nbytes, key=name
            )

    def view(self, offset: int, nbytes: int, key: str) -> memoryview:
        return memoryview(self._bytes[key][offset : offset + nbytes])

    @contextlib.contextmanager
    def window(self, offset: int, nbytes: int, key: str) -> Iterator[memoryview]:
        yield self.view(offset, nbytes, key)

    def close(self) -> None:
        self._bytes.clear()
