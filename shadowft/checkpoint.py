"""Safetensors checkpoints read and written in bounded memory: the engine's ground floor, in one import.

The pieces live in modules with one job each (docs/architecture.md):
`shadowft.reader` (reading), `shadowft.pickled` (pickle shards),
`shadowft.writer` (writing), `shadowft.dtypes` (dtype codes),
`shadowft.numerics` (the exact arithmetic), `shadowft.parallel` (threads and
progress), `shadowft.provenance` (hashing), `shadowft.layout` (names and
suffixes). This module re-exports their public names for the code that
imports them from here.
"""

from shadowft.dtypes import FLOAT_DTYPES, dtype_code, itemsize, torch_dtype_name
from shadowft.layout import CheckpointError, embedding_and_head, is_output_head, is_vocab_indexed
from shadowft.numerics import (
    CHUNK_ELEMENTS,
    Block,
    Scratch,
    blocks,
    byte_ranges,
    check_chunk_elements,
    compute_dtype,
    encode,
    read_float,
)
from shadowft.parallel import TASK_CHUNKS, default_threads, progress_bar, run_tasks
from shadowft.provenance import file_sha256
from shadowft.reader import WINDOW_BYTES, Checkpoint, TensorInfo, read_array, ties_embeddings
from shadowft.streaming import copy_bytes
from shadowft.writer import OutputTensor, SafetensorsWriter, output_tensor, parse_size

__all__ = [
    "CHUNK_ELEMENTS",
    "FLOAT_DTYPES",
    "TASK_CHUNKS",
    "WINDOW_BYTES",
    "Block",
    "Checkpoint",
    "CheckpointError",
    "OutputTensor",
    "SafetensorsWriter",
    "Scratch",
    "TensorInfo",
    "blocks",
    "byte_ranges",
    "check_chunk_elements",
    "compute_dtype",
    "copy_bytes",
    "default_threads",
    "dtype_code",
    "embedding_and_head",
    "encode",
    "file_sha256",
    "is_output_head",
    "is_vocab_indexed",
    "itemsize",
    "output_tensor",
    "parse_size",
    "progress_bar",
    "read_array",
    "read_float",
    "run_tasks",
    "ties_embeddings",
    "torch_dtype_name",
]
