"""Safetensors checkpoints read and written in bounded memory.

Reading: a checkpoint is a folder (sharded with an index, or a single file) or
one ``.safetensors`` file. Tensors are located by byte offset and read through
small memory-mapped windows (8 MiB) that each worker thread moves along the
file: chunks are converted straight from the page cache, skipping read()'s
copy (measured: half the CPU of pread on a warm cache), and a window is
unmapped when the thread moves on, so resident memory stays flat however large
the model is (mapped pages count as RSS only while mapped; keeping whole files
mapped and dropping pages with MADV_DONTNEED leaked RSS, because the kernel
maps whole large folios around each fault).

Writing: the whole output layout (shards, headers, offsets) is planned before
the first byte, so worker threads write chunks at their final offsets in any
order and never hold a whole tensor.

Arithmetic helpers convert between storage dtypes and a float compute buffer
with numpy only: bfloat16 is handled through its bit pattern (numpy has no
bfloat16), rounding to nearest-even exactly like torch. numpy keeps the engine
light: importing torch alone costs about 270 MB of resident memory.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import itertools
import json
import math
import mmap
import os
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from shadowft.io import atomic_write_json, sha256_file

if sys.byteorder != "little":  # safetensors stores little-endian bytes; we read them raw
    raise ImportError("shadowft.checkpoint needs a little-endian machine")

#: Elements per streamed chunk. Measured: 2^18 float32 elements (1 MiB per
#: buffer) keep a chunk's passes in cache; 2^20 was 1.5-2x slower per element.
#: The engine's entry points take it as `chunk_elements` (see check_chunk_elements).
CHUNK_ELEMENTS = 1 << 18

#: Bytes a worker maps at a time per input file, and chunks per worker task:
#: a task's chunks are consecutive, so one window serves all of them.
WINDOW_BYTES = 8 << 20
TASK_CHUNKS = 8
_OPEN_WINDOWS = 4  # per thread: the inputs of one graft, plus one

_MAX_HEADER_BYTES = 100_000_000  # the limit safetensors itself enforces

# safetensors dtype code -> numpy dtype that holds its bytes. BF16 is held as
# its uint16 bit pattern; 8-bit floats are opaque bytes (copied, never computed).
_STORAGE = {
    "BOOL": np.dtype(np.bool_),
    "U8": np.dtype(np.uint8),
    "I8": np.dtype(np.int8),
    "U16": np.dtype(np.uint16),
    "I16": np.dtype(np.int16),
    "U32": np.dtype(np.uint32),
    "I32": np.dtype(np.int32),
    "U64": np.dtype(np.uint64),
    "I64": np.dtype(np.int64),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(np.uint16),
    "F32": np.dtype(np.float32),
    "F64": np.dtype(np.float64),
    "F8_E4M3": np.dtype(np.uint8),
    "F8_E5M2": np.dtype(np.uint8),
    "F8_E8M0": np.dtype(np.uint8),
}
#: dtypes the engine does arithmetic on.
FLOAT_DTYPES = ("BF16", "F16", "F32", "F64")

_DTYPE_ALIASES = {
    "bf16": "BF16", "bfloat16": "BF16",
    "f16": "F16", "fp16": "F16", "float16": "F16", "half": "F16",
    "f32": "F32", "fp32": "F32", "float32": "F32", "float": "F32",
    "f64": "F64", "fp64": "F64", "float64": "F64", "double": "F64",
}
_TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
_TORCH_TO_CODE = {**{v: k for k, v in _TORCH_NAMES.items()},
                  "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


class CheckpointError(ValueError):
    """An input or output checkpoint is unusable; the message names the file or tensor."""


def dtype_code(name: str) -> str:
    """Normalize a dtype name ('bfloat16', 'bf16', 'BF16', 'torch.float16') to a float dtype code."""
    key = str(name).removeprefix("torch.")
    code = _DTYPE_ALIASES.get(key.lower(), key.upper())
    if code not in FLOAT_DTYPES:
        raise CheckpointError(
            f"unsupported dtype {name!r}: choose one of bfloat16, float16, float32, float64"
        )
    return code


def torch_dtype_name(code: str) -> str:
    """The name transformers writes in config.json for a float dtype code."""
    return _TORCH_NAMES[code]


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


def parse_size(size: int | str) -> int:
    """Bytes from an int or a string such as '5GB', '500MB', '2GiB' (GB = 10^9, as transformers)."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*", str(size), re.IGNORECASE)
        if not match:
            raise CheckpointError(f"cannot read size {size!r}: use e.g. 5GB, 500MB or a byte count")
        unit = (match.group(2) or "B").upper().rstrip("B") or "B"
        scale = {"B": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
                 "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}[unit]
        value = int(float(match.group(1)) * scale)
    if value <= 0:
        raise CheckpointError(f"size must be positive, got {size!r}")
    return value


# --------------------------------------------------------------------------- reading


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
            storage = _STORAGE.get(dtype)
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


class _PickleShard:
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
            code = _TORCH_TO_CODE.get(str(tensor.dtype).removeprefix("torch."))
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


@dataclass(frozen=True, eq=False)
class TensorInfo:
    """Where one tensor's bytes are: file, absolute byte offset, dtype and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    source: Any  # _SafetensorsFile | _PickleShard
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
        storage = _STORAGE.get(self.dtype)
        return storage.itemsize if storage is not None else 1

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def window(self, byte_start: int, nbytes: int) -> contextlib.AbstractContextManager[memoryview]:
        """A read-only view of `nbytes` bytes of this tensor's data from `byte_start`, valid inside `with`."""
        if self.key is None:
            return self.source.window(self.offset + byte_start, nbytes)
        return self.source.window(byte_start, nbytes, self.key)


_PICKLE_HINT = (
    "pickle files can run arbitrary code when loaded; pass allow_pickle=True (--allow-pickle) "
    "to load them anyway (with torch.load(weights_only=True)), or convert them to safetensors"
)


class Checkpoint:
    """A model folder or file: tensor names mapped to where their bytes are.

    Accepts a folder with ``model.safetensors.index.json``, ``model.safetensors``,
    another single ``*.safetensors.index.json`` or unindexed ``*.safetensors``
    files; or a single ``.safetensors`` file. Pickle (``.bin``/``.pt``) files
    are refused unless ``allow_pickle``. Use as a context manager to close files.
    """

    def __init__(self, path: Path, *, allow_pickle: bool = False):
        self.path = Path(path)
        self._shards: list[_SafetensorsFile | _PickleShard] = []
        self.tensors: dict[str, TensorInfo] = {}
        try:
            files, index = self._locate(allow_pickle)
            for file in files:
                shard = _PickleShard(file) if _is_pickle(file) else _SafetensorsFile(file)
                self._shards.append(shard)
                for name, info in shard.tensors.items():
                    if name in self.tensors:
                        raise CheckpointError(
                            f"{self.path}: tensor {name!r} is in both {self.tensors[name].path.name} "
                            f"and {file.name}"
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
    return path.is_file() and path.suffix in {".bin", ".pt", ".pth", ".ckpt", ".pkl"}


def read_array(info: TensorInfo) -> np.ndarray:
    """A whole (small) tensor as a numpy array of its storage dtype (BF16 as uint16 bits)."""
    with info.window(0, info.nbytes) as view:
        return np.frombuffer(view, _STORAGE[info.dtype]).reshape(info.shape).copy()


# ---------------------------------------------------------- embeddings and tying

_EMBEDDING = re.compile(r"(?:^|\.)(?:embed_tokens|wte|word_embeddings|tok_embeddings|embed_in)\.weight$")
_HEAD = re.compile(r"(?:^|\.)(?:lm_head|embed_out)\.weight$|^output\.weight$")


def itemsize(code: str) -> int:
    """Bytes per element of a safetensors dtype code."""
    return _STORAGE[code].itemsize


def is_output_head(name: str) -> bool:
    return bool(_HEAD.search(name))


def is_vocab_indexed(name: str) -> bool:
    """Whether a tensor's first dimension is the vocabulary (input embeddings or output head)."""
    return bool(_EMBEDDING.search(name) or _HEAD.search(name))


def embedding_and_head(names: Iterable[str]) -> tuple[str | None, str | None]:
    """The input-embedding and output-head tensor names among `names` (None when absent)."""
    names = list(names)
    embeddings = [n for n in names if _EMBEDDING.search(n)]
    heads = [n for n in names if _HEAD.search(n)]
    return (embeddings[0] if len(embeddings) == 1 else None, heads[0] if len(heads) == 1 else None)


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


# --------------------------------------------------------------------- writing


@dataclass(frozen=True)
class OutputTensor:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


def output_tensor(name: str, dtype: str, shape: tuple[int, ...]) -> OutputTensor:
    return OutputTensor(name, dtype, tuple(shape), math.prod(shape) * _STORAGE[dtype].itemsize)


class SafetensorsWriter:
    """Writes planned tensors into (sharded) safetensors files at precomputed offsets.

    Shards follow transformers' names: ``{prefix}.safetensors`` when one file is
    enough, else ``{prefix}-00001-of-0000N.safetensors`` plus
    ``{prefix}.safetensors.index.json``. A tensor larger than the shard limit
    gets a shard of its own. ``write`` is safe to call from several threads.
    """

    def __init__(self, directory: Path, tensors: list[OutputTensor], *, prefix: str = "model",
                 max_shard_bytes: int = 5 * 10**9):
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
            [f"{prefix}.safetensors"] if count == 1
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
                header[tensor.name] = {"dtype": tensor.dtype, "shape": list(tensor.shape),
                                       "data_offsets": [position, position + tensor.nbytes]}
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
            n = os.pwrite(fd, data, offset)
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


# ------------------------------------------------------------ chunked arithmetic


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


class Scratch:
    """One thread's reusable buffers and open input windows: streaming allocates nothing per chunk."""

    def __init__(self, chunk: int = CHUNK_ELEMENTS):
        self.chunk = chunk
        self._work = [np.empty(chunk, np.float64) for _ in range(3)]
        self._bits = np.empty(chunk, np.uint32)
        self._flags = np.empty(chunk, np.bool_)
        self._out = np.empty(chunk * 8, np.uint8)
        self._windows: collections.OrderedDict[Any, _Window] = collections.OrderedDict()
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


def read_float(info: TensorInfo, start: int, out: np.ndarray, scratch: Scratch) -> np.ndarray:
    """Fill `out` (float32/64) with elements [start, start+len(out)) of `info`, exactly converted."""
    count, storage = len(out), _STORAGE[info.dtype]
    values = np.frombuffer(scratch.view(info, start * storage.itemsize, count * storage.itemsize), storage)
    if info.dtype != "BF16":
        np.copyto(out, values)
    elif out.dtype == np.float32:
        np.left_shift(values, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        bits = scratch._bits[:count]
        np.left_shift(values, 16, out=bits, dtype=np.uint32)
        np.copyto(out, bits.view(np.float32))
    return out


def encode(values: np.ndarray, code: str, scratch: Scratch) -> memoryview:
    """The bytes of `values` rounded once (to nearest even) to dtype `code`."""
    storage = _STORAGE[code]
    if storage == values.dtype:
        return memoryview(values.view(np.uint8))
    count = len(values)
    out = np.frombuffer(scratch.out(count * storage.itemsize), storage)
    if code != "BF16":
        np.copyto(out, values, casting="unsafe")
        return memoryview(out.view(np.uint8))
    if values.dtype != np.float32:
        raise CheckpointError("rounding float64 to bfloat16 would round twice; choose float32 output")
    bits, rounding = values.view(np.uint32), scratch._bits[:count]
    # Round to nearest even on the top 16 bits: add 0x7FFF plus the lowest kept bit.
    np.right_shift(bits, 16, out=rounding)
    np.bitwise_and(rounding, 1, out=rounding)
    np.add(rounding, 0x7FFF, out=rounding)
    np.add(rounding, bits, out=rounding)
    np.right_shift(rounding, 16, out=rounding)
    np.copyto(out, rounding, casting="unsafe")
    nan = np.isnan(values, out=scratch._flags[:count])
    if nan.any():  # the bias above can carry a NaN into infinity: keep it a quiet NaN
        out[nan] = (bits[nan] >> 16).astype(np.uint16) | 0x0040
    return memoryview(out.view(np.uint8))


def copy_bytes(info: TensorInfo, byte0: int, byte1: int, writer: SafetensorsWriter, name: str,
               scratch: Scratch) -> int:
    """Copy bytes [byte0, byte1) of a tensor unchanged to the output tensor `name`."""
    writer.write(name, byte0, scratch.view(info, byte0, byte1 - byte0))
    return byte1 - byte0


def byte_ranges(nbytes: int, chunk_bytes: int = CHUNK_ELEMENTS * 8) -> Iterator[tuple[int, int]]:
    for start in range(0, nbytes, chunk_bytes):
        yield start, min(start + chunk_bytes, nbytes)


# ------------------------------------------------------------------ parallelism


def default_threads() -> int:
    """CPUs this process may use (honours affinity masks such as SLURM's), at most 8."""
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:
        available = os.cpu_count() or 1
    return max(1, min(8, available))


def run_tasks(tasks: Iterable[Callable[[Scratch], Any]], *, threads: int | None = None,
              on_result: Callable[[Any], None] = lambda result: None,
              chunk_elements: int = CHUNK_ELEMENTS) -> None:
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

    return tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                disable=not enabled, file=sys.stderr, dynamic_ncols=True)


# ---------------------------------------------------------------------- hashing


def _hash_cache_dir() -> Path | None:
    configured = os.environ.get("SHADOWFT_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shadowft"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered across runs while the file stays the same.

    Hashing a large model costs seconds per GB, and grafting the same inputs at
    several alphas would pay it every time. The digest is cached under
    ``$SHADOWFT_CACHE_DIR`` (default ``~/.cache/shadowft``; empty disables it),
    keyed by the file's device, inode, size, mtime and ctime: any change to the
    file changes its ctime, so a stale digest is never reused.
    """
    path = Path(path).resolve()
    stat = path.stat()
    signature = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    cache_dir = _hash_cache_dir()
    entry = None
    if cache_dir is not None:
        entry = cache_dir / "sha256" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
        try:
            cached = json.loads(entry.read_text())
            if cached.get("signature") == signature and cached.get("path") == str(path):
                return cached["sha256"]
        except (OSError, ValueError, AttributeError):
            pass
    digest = sha256_file(path)
    if entry is not None:
        try:
            atomic_write_json(entry, {"path": str(path), "signature": signature, "sha256": digest})
        except OSError:
            pass  # an unwritable cache only costs time
    return digest


class BackgroundDigests:
    """SHA-256 of input files, computed on a background thread while the caller streams."""

    def __init__(self, paths: Iterable[Path]):
        self._paths = list(dict.fromkeys(Path(p) for p in paths))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowft-sha256")
        self._futures = {p: self._pool.submit(file_sha256, p) for p in self._paths}
        self._pool.shutdown(wait=False)

    def describe(self, root: Path, paths: Iterable[Path]) -> dict[str, dict[str, Any]]:
        """{file name relative to root: {"sha256", "bytes"}} for the given paths (waits for them)."""
        described = {}
        for path in paths:
            path = Path(path)
            digest = self._futures[path].result() if path in self._futures else file_sha256(path)
            key = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
            described[key] = {"sha256": digest, "bytes": path.stat().st_size}
        return described

    def cancel(self) -> None:
        for future in self._futures.values():
            future.cancel()
