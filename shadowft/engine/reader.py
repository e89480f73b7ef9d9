"""Reading safetensors checkpoints in bounded memory.

A checkpoint is a folder (sharded with an index, or a single file) or one
``.safetensors`` file. Tensors are located by byte offset and read through
small memory-mapped windows (8 MiB) that each worker thread moves along the
file: chunks are converted straight from the page cache, skipping read()'s
copy (measured: half the CPU of pread on a warm cache), and a window is
unmapped when the thread moves on, so resident memory stays flat however large
the model is (mapped pages count as RSS only while mapped; keeping whole files
mapped and dropping pages with MADV_DONTNEED leaked RSS, because the kernel
maps whole large folios around each fault). Pickle shards are in
``shadowft.engine.pickled``.
"""

from __future__ import annotations

import contextlib
import json
import math
import mmap
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from shadowft.engine.dtypes import STORAGE
from shadowft.engine.layout import CheckpointError, embedding_and_head, is_pickle_name
from shadowft.engine.tensors import TensorInfo

if sys.byteorder != "little":  # safetensors stores little-endian bytes; we read them raw
    raise ImportError("shadowft.engine.reader needs a little-endian machine")

#: Bytes a worker maps at a time per input file.
WINDOW_BYTES = 8 << 20
_MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces

_PICKLE_HINT = (
    "pickle files can run arbitrary code when loaded; pass allow_pickle=True (--allow-pickle) "
    "to load them anyway (with torch.load(weights_only=True)), or convert them to safetensors"
)


class _SafetensorsFile:
    """One open safetensors file: its header and windows onto its bytes."""

    def __init__(self, path: Path):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        try:
            self.size = os.fstat(self.fd).st_size
            self.tensors = self._parse_header(self.fd)
        except BaseException:
            os.close(self.fd)
            raise

    def _parse_header(self, fd: int) -> dict[str, TensorInfo]:
        if self.size < 8:
            raise CheckpointError(f"{self.path}: not a safetensors file (shorter than 8 bytes)")
        header_len = int.from_bytes(os.pread(fd, 8, 0), "little")
        if header_len > min(_MAX_HEADER_BYTES, self.size - 8):
            raise CheckpointError(f"{self.path}: not a safetensors file (header length {header_len})")
        try:
            header = json.loads(os.pread(fd, header_len, 8))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.path}: unreadable safetensors header ({exc})") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: safetensors header is not a JSON object")
        data_start = 8 + header_len
        data_size = self.size - data_start
        tensors = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype, shape = entry["dtype"], tuple(int(d) for d in entry["shape"])
                begin, end = (int(x) for x in entry["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: malformed header entry for tensor {name!r}") from None
            storage = STORAGE.get(dtype)
            expected = math.prod(shape) * storage.itemsize if storage is not None else end - begin
            if not 0 <= begin <= end <= data_size or end - begin != expected or min(shape, default=0) < 0:
                raise CheckpointError(
                    f"{self.path}: tensor {name!r} ({dtype} {list(shape)}) has inconsistent data "
                    f"offsets [{begin}, {end}] (file truncated or corrupt?)"
                )
            tensors[name] = TensorInfo(name, dtype, shape, self, data_start + begin, end - begin)
        return dict(sorted(tensors.items(), key=lambda item: item[1].offset))

    def map(self, offset: int, nbytes: int) -> _Window:
        """Map at least bytes [offset, offset + nbytes) of the file (more, up to WINDOW_BYTES, if it has them)."""
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        end = min(self.size, max(offset + nbytes, start + WINDOW_BYTES))
        return _Window(start, mmap.mmap(self.fd, end - start, offset=start, access=mmap.ACCESS_READ))

    @contextlib.contextmanager
    def window(self, offset: int, nbytes: int) -> Iterator[memoryview]:
        """Bytes [offset, offset + nbytes) of the file, mapped only inside the `with` block."""
        if nbytes == 0:
            yield memoryview(b"")
            return
        window = self.map(offset, nbytes)
        try:
            with window.view(offset, nbytes) as view:
                yield view
        finally:
            window.close()

    def close(self) -> None:
        os.close(self.fd)


class _Window:
    """A mapped range of a file, starting at byte `start`."""

    def __init__(self, start: int, mapping: mmap.mmap):
        self.start, self.end = start, start + len(mapping)
        self._mapping = mapping
        self._whole = memoryview(mapping)

    def covers(self, offset: int, nbytes: int) -> bool:
        return self.start <= offset and offset + nbytes <= self.end

    def view(self, offset: int, nbytes: int) -> memoryview:
        return self._whole[offset - self.start : offset - self.start + nbytes]

    def close(self) -> None:
        try:
            self._whole.release()
            self._mapping.close()
        except BufferError:  # a view escaped (e.g. into a traceback): unmapped when collected
            pass


class Checkpoint:
    """A model folder or file: tensor names mapped to where their bytes are.

    Accepts a folder with ``model.safetensors.index.json``, ``model.safetensors``,
    another single ``*.safetensors.index.json`` or unindexed ``*.safetensors``
    files; or a single ``.safetensors`` file. Pickle (``.bin``/``.pt``) files
    are refused unless ``allow_pickle``. Use as a context manager to close files.
    """

    def __init__(self, path: Path, *, allow_pickle: bool = False):
        self.path = Path(path)
        self._shards: list[Any] = []
        self.tensors: dict[str, TensorInfo] = {}
        try:
            files, index = self._locate(allow_pickle)
            for file in files:
                shard = _open_shard(file)
                self._shards.append(shard)
                for name, info in shard.tensors.items():
                    if name in self.tensors:
                        raise CheckpointError(
                            f"{self.path}: tensor {name!r} is in both {self.tensors[name].path.name} and {file.name}"
                        )
                    self.tensors[name] = info
            if index is not None:
                self._check_index(index)
        except BaseException:
            self.close()
            raise
        self.config = self._read_json("config.json")

    def _locate(self, allow_pickle: bool) -> tuple[list[Path], dict | None]:
        path = self.path
        if path.is_file():
            if _is_pickle(path) and not allow_pickle:
                raise CheckpointError(f"{path}: {_PICKLE_HINT}")
            return [path], None
        if not path.is_dir():
            raise CheckpointError(f"{path}: no such checkpoint file or folder")
        for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
            if (path / index_name).is_file():
                return self._from_index(path / index_name, allow_pickle)
        if (path / "model.safetensors").is_file():
            return [path / "model.safetensors"], None
        indexes = sorted(path.glob("*.safetensors.index.json"))
        if len(indexes) == 1:
            return self._from_index(indexes[0], allow_pickle)
        files = sorted(path.glob("*.safetensors"))
        if files:
            return files, None
        pickles = sorted(p for p in path.iterdir() if _is_pickle(p))
        if pickles and not allow_pickle:
            raise CheckpointError(f"{path}: only pickle weights found ({pickles[0].name}); {_PICKLE_HINT}")
        if pickles:
            return pickles, None
        raise CheckpointError(f"{path}: no safetensors weights found")

    def _from_index(self, index_path: Path, allow_pickle: bool) -> tuple[list[Path], dict]:
        try:
            weight_map = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index_path}: not a weight index ({exc})") from None
        files = [index_path.parent / name for name in dict.fromkeys(weight_map.values())]
        if any(_is_pickle(f) for f in files) and not allow_pickle:
            raise CheckpointError(f"{index_path}: {_PICKLE_HINT}")
        for file in files:
            if not file.is_file():
                raise CheckpointError(f"{index_path}: lists {file.name}, which does not exist")
        return files, weight_map

    def _check_index(self, weight_map: dict) -> None:
        for name, file in weight_map.items():
            info = self.tensors.get(name)
            if info is None or info.path.name != file:
                raise CheckpointError(f"{self.path}: index says tensor {name!r} is in {file}, but it is not")
        extra = self.tensors.keys() - weight_map.keys()
        if extra:
            raise CheckpointError(f"{self.path}: tensor {min(extra)!r} is missing from the weight index")

    def _read_json(self, name: str) -> dict | None:
        file = self.path / name
        if not self.path.is_dir() or not file.is_file():
            return None
        try:
            return json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise CheckpointError(f"{file}: invalid JSON ({exc})") from None

    @property
    def files(self) -> list[Path]:
        return [shard.path for shard in self._shards]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __getitem__(self, name: str) -> TensorInfo:
        return self.tensors[name]

    def close(self) -> None:
        for shard in self._shards:
            shard.close()
        self._shards = []

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _is_pickle(path: Path) -> bool:
    return path.is_file() and is_pickle_name(path.name)


def _open_shard(path: Path) -> Any:
    if _is_pickle(path):
        from shadowft.engine.pickled import PickleShard  # only pickle inputs need torch

        return PickleShard(path)
    return _SafetensorsFile(path)


def read_array(info: TensorInfo) -> np.ndarray:
    """A whole (small) tensor as a numpy array of its storage dtype (BF16 as uint16 bits)."""
    with info.window(0, info.nbytes) as view:
        return np.frombuffer(view, STORAGE[info.dtype]).reshape(info.shape).copy()


def ties_embeddings(checkpoint: Checkpoint) -> bool:
    """Whether the output head is the input embedding matrix.

    The config decides when it says (``tie_word_embeddings``, also inside a
    multimodal ``text_config``); otherwise a checkpoint with an embedding and
    no head tensor is tied.
    """
    config = checkpoint.config or {}
    for section in (config, config.get("text_config") or {}):
        if "tie_word_embeddings" in section:
            return bool(section["tie_word_embeddings"])
    embedding, head = embedding_and_head(checkpoint.tensors)
    return embedding is not None and head is None
