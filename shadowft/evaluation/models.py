"""The OpenCompass model entry: which wrapper runs the model (`BACKENDS`), on how many GPUs, with what batch.

``hf`` (transformers; CPU or GPU), ``vllm`` or ``lmdeploy`` (TurboMind; GPU only, each in
its own environment, envs/vllm.yaml and envs/lmdeploy.yaml). The job's GPUs set tensor
parallelism and the batch size. Every backend decodes greedily with the paper's lengths: answers
of up to 4096 tokens where a dataset sets none, in a window of max_seq_len 16384 capped by the
model (shadowft.evaluation.context). Standard library only: the core environment picks a job's
environment from `BACKEND_ENVS` without OpenCompass.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from shadowft.evaluation.context import context_window
from shadowft.evaluation.spec import PAPER_MAX_OUT_LEN

# OpenCompass names its output files after the model's abbreviation; one model per run.
MODEL_ABBR = "model"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# backend -> OpenCompass's chat-template model wrapper (OpenCompass 0.5.4)
BACKENDS = {
    "hf": "opencompass.models.HuggingFacewithChatTemplate",
    "vllm": "opencompass.models.VLLMwithChatTemplate",
    "lmdeploy": "opencompass.models.TurboMindModelwithChatTemplate",
}
# backend -> the environment (envs/<name>.yaml) whose OpenCompass has that backend's engine
BACKEND_ENVS = {"hf": "eval", "vllm": "vllm", "lmdeploy": "lmdeploy"}
# Prompts handed to the model at once, per GPU. The engines batch continuously, so they take
# more than transformers' padded batches; OpenCompass's own vLLM/LMDeploy configs use 16 on
# one GPU.
BATCH_PER_GPU = {"hf": 8, "vllm": 32, "lmdeploy": 32}
# A CPU job's batch (transformers only). What runs on a CPU is a small model, whose generation
# is mostly per-step overhead in transformers' loop, paid once per batch: on the demo's models
# 32 scores 200 questions 2-3 s faster than 8, with the same answers (docs/speed.md).
CPU_BATCH = 32


def tensor_parallel_for(num_gpus: int) -> int:
    """GPUs one model is split over: the most a power of two allows (vLLM and TurboMind split
    attention heads evenly, and head counts are powers of two times a small factor)."""
    return 1 << (max(num_gpus, 1).bit_length() - 1)


def batch_size_for(backend: str, num_gpus: int) -> int:
    """The batch size of a job with `num_gpus` GPUs (0: CPU) on `backend`."""
    return BATCH_PER_GPU[backend] * num_gpus if num_gpus > 0 else CPU_BATCH


@dataclass(frozen=True)
class ModelOptions:
    """How OpenCompass runs the model: its backend, GPUs, batch, context length, dtype and code.

    Checked by `model_config`, where the batch size's default is known.
    """

    backend: str = "hf"
    num_gpus: int = 0  # 0 runs on CPU
    batch_size: int | None = None  # default: from the backend and the GPUs (batch_size_for)
    max_seq_len: int | None = None  # default: the paper's 16384; capped by the model either way
    dtype: str = "auto"
    trust_remote_code: bool = False


def model_config(model_dir: Path, options: ModelOptions | None = None, *, meta_template: dict | None = None) -> dict:
    """The OpenCompass model entry: a chat model on ``options.backend``, greedy decoding.

    max_seq_len is `context_window`'s (the paper's 16384, or ``options.max_seq_len``, capped by
    the model's config.json), the one value each backend takes as its window. vLLM and LMDeploy
    split the model over the job's GPUs (`tensor_parallel_for`: all of them when a power of two)
    and need at least one.
    """
    options = options or ModelOptions()
    backend, num_gpus, dtype = options.backend, options.num_gpus, options.dtype
    max_seq_len = context_window(Path(model_dir), options.max_seq_len).max_seq_len
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    batch_size = batch_size_for(backend, num_gpus) if options.batch_size is None else options.batch_size
    if num_gpus < 0 or batch_size < 1:
        raise ValueError(f"num_gpus must be >= 0 and batch_size >= 1 (got {num_gpus}, {batch_size})")
    if backend != "hf" and num_gpus < 1:
        raise ValueError(f"backend {backend} runs on GPUs only (got num_gpus={num_gpus}); use backend hf on CPU")
    if backend == "hf":
        engine = _transformers_keys(dtype, options.trust_remote_code)
    elif backend == "vllm":
        engine = _vllm_keys(num_gpus, max_seq_len, dtype, options.trust_remote_code)
    else:
        engine = _turbomind_keys(num_gpus, batch_size, max_seq_len, dtype)
    model = {
        "type": BACKENDS[backend],
        "abbr": MODEL_ABBR,
        "path": str(Path(model_dir).resolve()),
        **engine,
        # What a dataset without a max_out_len of its own gets (shadowft writes every dataset's).
        "max_out_len": PAPER_MAX_OUT_LEN,
        "max_seq_len": max_seq_len,
        "batch_size": batch_size,
        "run_cfg": {"num_gpus": num_gpus},
    }
    if meta_template is not None:
        model["meta_template"] = meta_template
    return model


def _transformers_keys(dtype: str, trust_remote_code: bool) -> dict:
    """HuggingFacewithChatTemplate's own keys of the model entry."""
    return {
        # OpenCompass defaults trust_remote_code to True for both; we never run a model's
        # own code unless asked.
        "model_kwargs": {"trust_remote_code": trust_remote_code, "torch_dtype": dtype},
        "tokenizer_kwargs": {"trust_remote_code": trust_remote_code},
        # A model's generation_config.json may ask for sampling or beams: override both.
        "generation_kwargs": {"do_sample": False, "num_beams": 1},
    }


def _vllm_keys(num_gpus: int, max_seq_len: int, dtype: str, trust_remote_code: bool) -> dict:
    """VLLMwithChatTemplate's own keys of the model entry."""
    # vLLM's LLM(...) arguments; OpenCompass defaults trust_remote_code to True.
    model_kwargs = {
        "tensor_parallel_size": tensor_parallel_for(num_gpus),
        "trust_remote_code": trust_remote_code,
        "dtype": dtype,
        "max_model_len": max_seq_len,
    }
    # Greedy: temperature 0 (the wrapper drops do_sample).
    return {"model_kwargs": model_kwargs, "generation_kwargs": {"temperature": 0}}


def _turbomind_keys(num_gpus: int, batch_size: int, max_seq_len: int, dtype: str) -> dict:
    """TurboMindModelwithChatTemplate's own keys of the model entry."""
    # TurboMind's engine: tp GPUs, as many sequences at once as the batch, the run's window.
    engine_config = {"tp": tensor_parallel_for(num_gpus), "max_batch_size": batch_size, "session_len": max_seq_len}
    if dtype == "float32":
        raise ValueError("backend lmdeploy: TurboMind computes in float16 or bfloat16, not float32")
    if dtype != "auto":
        engine_config["dtype"] = dtype
    return {
        "backend": "turbomind",
        "engine_config": engine_config,
        # The authors' gen_config: greedy (top_k 1; the wrapper also sets do_sample False, and
        # LMDeploy accepts temperature 0). The wrapper replaces max_new_tokens by each dataset's
        # max_out_len.
        "gen_config": {"top_k": 1, "temperature": 0, "top_p": 0.9, "max_new_tokens": PAPER_MAX_OUT_LEN},
    }
