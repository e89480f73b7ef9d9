"""safetensors dtype codes: how their bytes are held in numpy, their names, their sizes.

bfloat16 is held as its uint16 bit pattern (numpy has no bfloat16); the
8-bit floats are opaque bytes, copied and never computed on.
"""

from __future__ import annotations

import numpy as np

from shadowft.engine.layout import CheckpointError

# safetensors dtype code -> numpy dtype that holds its bytes
STORAGE = {
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

_ALIASES = {
    **dict.fromkeys(("bf16", "bfloat16"), "BF16"),
    **dict.fromkeys(("f16", "fp16", "float16", "half"), "F16"),
    **dict.fromkeys(("f32", "fp32", "float32", "float"), "F32"),
    **dict.fromkeys(("f64", "fp64", "float64", "double"), "F64"),
}
_TORCH_NAMES = {"BF16": "bfloat16", "F16": "float16", "F32": "float32", "F64": "float64"}
#: torch dtype name (without "torch.") -> code, for pickle shards.
TORCH_TO_CODE = {
    **{v: k for k, v in _TORCH_NAMES.items()},
    **{"int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"},
}


def dtype_code(name: str) -> str:
    """Normalize a dtype name ('bfloat16', 'bf16', 'BF16', 'torch.float16') to a float dtype code."""
    key = str(name).removeprefix("torch.")
    code = _ALIASES.get(key.lower(), key.upper())
    if code not in FLOAT_DTYPES:
        raise CheckpointError(f"unsupported dtype {name!r}: choose one of bfloat16, float16, float32, float64")
    return code


def torch_dtype_name(code: str) -> str:
    """The name transformers writes in config.json for a float dtype code."""
    return _TORCH_NAMES[code]


def itemsize(code: str) -> int:
    """Bytes per element of a safetensors dtype code (1 for codes it does not know)."""
    storage = STORAGE.get(code)
    return storage.itemsize if storage is not None else 1
