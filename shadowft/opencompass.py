"""OpenCompass evaluation: the run configuration as data, the run, and its scores.

One `evaluate` call scores one model on one benchmark and writes a tidy ``scores.csv``
(benchmark, dataset, metric, score, num_examples; scores in percent, as OpenCompass reports
them) and ``predictions.json`` (what the model answered, per dataset) beside it.

A benchmark is a dict from the workflow configuration:

- ``{"name", "kind": "custom", "path", "metric", "max_out_len", "prompt"}``: ``path`` is a
  JSON-lines file of ``{"question": str, "answer": str}``; the model is asked ``prompt``
  (default ``"{question}"``) as the user turn of its chat template, and its answer,
  stripped of surrounding whitespace, must equal the stripped answer (metric exact_match).
- ``{"name", "kind": "opencompass", "config", "variable", "max_out_len"}``: a standard
  OpenCompass dataset config, named as a module (``opencompass.configs.datasets.gsm8k.gsm8k_gen``,
  the catalog's form, shadowft.benchmarks) or by its file name (``gsm8k_gen``), and the
  list of dataset entries inside it (``variable``; default: every ``*_datasets``), scored
  by its own evaluator; its data is read from ``COMPASS_DATA_CACHE``, prefetched
  (shadowft.opencompass_data), since evaluation runs offline.

The model runs on one of `BACKENDS`: ``hf`` (transformers; CPU or GPU), ``vllm`` or
``lmdeploy`` (TurboMind; GPU only, each in its own environment, envs/vllm.yaml and
envs/lmdeploy.yaml). The job's GPUs set tensor parallelism and the batch size.

The run configuration is plain JSON (OpenCompass's config loader reads ``.json``; classes
are named by their import paths), so it is written with ``json.dump`` and can be read in
the run folder. OpenCompass runs as ``python -m opencompass.cli.main`` of this interpreter.

Module top level is stdlib-only: this runs in the eval environment with the repository on
PYTHONPATH, and the core environment imports it (the report takes `SCORES_COLUMNS`, job
sizing `max_out_len_of`) without OpenCompass. `read_scores` is the plain reader of the
scores.csv format `write_scores` writes.
"""

from __future__ import annotations

import argparse
import collections
import csv
import io
import json
import logging
import math
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from shadowft.chat_templates import with_template_defaults
from shadowft.io import atomic_write_json, atomic_write_text

SCORES_COLUMNS = ("benchmark", "dataset", "metric", "score", "num_examples")
PREDICTIONS_FILE = "predictions.json"
RUN_CONFIG_FILE = "shadowft_run.json"
RUN_LOG_FILE = "opencompass.log"

# OpenCompass names its output files after the model's abbreviation; one model per run.
MODEL_ABBR = "model"
# Standard dataset configs set their own generation length; this is the fallback for those
# that do not, the same as OpenCompass's configs for chat models.
DEFAULT_MAX_OUT_LEN = 4096
DEFAULT_CUSTOM_MAX_OUT_LEN = 64
DEFAULT_PROMPT = "{question}"
DTYPES = ("auto", "float32", "bfloat16", "float16")
# backend -> OpenCompass's chat-template model wrapper (OpenCompass 0.5.4)
BACKENDS = {
    "hf": "opencompass.models.HuggingFacewithChatTemplate",
    "vllm": "opencompass.models.VLLMwithChatTemplate",
    "lmdeploy": "opencompass.models.TurboMindModelwithChatTemplate",
}
# backend -> the environment (envs/<name>.yaml) whose OpenCompass has that backend's engine
BACKEND_ENVS = {"hf": "eval", "vllm": "vllm", "lmdeploy": "lmdeploy"}
# Prompts handed to the model at once, per GPU (the CPU counts as one). The engines batch
# continuously, so they take more than transformers' padded batches; OpenCompass's own
# vLLM/LMDeploy configs use 16 on one GPU.
BATCH_PER_GPU = {"hf": 8, "vllm": 32, "lmdeploy": 32}

# OpenCompass's default chat meta-template ends every user turn with "\n" (it merges an
# empty SYSTEM turn into the HUMAN one). A custom benchmark must ask exactly its prompt,
# the text the model was fine-tuned on, so it gets a template without that turn.
EXACT_PROMPT_META_TEMPLATE = {
    "round": [
        {"role": "HUMAN", "api_role": "HUMAN"},
        {"role": "BOT", "api_role": "BOT", "generate": True},
    ]
}

# metric name -> (OpenCompass evaluator, the key of the score in its results)
CUSTOM_METRICS = {
    # AccEvaluator compares whole strings; str.strip on both sides makes it exact match of
    # the answer. (EMEvaluator lowercases, drops punctuation and articles, and treats a
    # plain-string reference as a list of characters.)
    "exact_match": ("opencompass.openicl.icl_evaluator.AccEvaluator", "accuracy"),
}

_KIND_KEYS = {
    "custom": ({"name", "kind", "path"}, {"metric", "max_out_len", "prompt"}),
    "opencompass": ({"name", "kind", "config"}, {"max_out_len", "variable"}),
}
# The name becomes OpenCompass's dataset abbreviation, hence a file name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
_LOG_TAIL_LINES = 20

log = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """OpenCompass did not score every dataset; the message says which and where to read why."""


def check_benchmark(benchmark: dict) -> dict:
    """Validate a benchmark spec and return a copy with its defaults filled in."""
    if not isinstance(benchmark, dict):
        raise TypeError(f"benchmark: expected a mapping, got {type(benchmark).__name__}")
    kind = benchmark.get("kind")
    if kind not in _KIND_KEYS:
        raise ValueError(f"benchmark.kind: {kind!r} is not one of {', '.join(_KIND_KEYS)}")
    required, optional = _KIND_KEYS[kind]
    missing = sorted(required - benchmark.keys())
    if missing:
        raise ValueError(f"benchmark ({kind}): missing key(s) {', '.join(missing)}")
    unknown = sorted(benchmark.keys() - required - optional)
    if unknown:
        raise ValueError(
            f"benchmark ({kind}): unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(required | optional))}"
        )
    name = benchmark["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"benchmark.name: {name!r} must be letters, digits, '.', '_' or '-' (it names files)")
    max_out_len = benchmark.get("max_out_len")
    if max_out_len is not None and (
        isinstance(max_out_len, bool) or not isinstance(max_out_len, int) or max_out_len < 1
    ):
        raise ValueError(f"benchmark.max_out_len: {max_out_len!r} must be a positive integer")

    spec = dict(benchmark)
    if kind == "custom":
        spec.setdefault("metric", "exact_match")
        spec["max_out_len"] = max_out_len_of(spec)
        spec.setdefault("prompt", DEFAULT_PROMPT)
        if spec["metric"] not in CUSTOM_METRICS:
            raise ValueError(f"benchmark.metric: {spec['metric']!r} is not one of {', '.join(CUSTOM_METRICS)}")
        if not isinstance(spec["prompt"], str) or "{question}" not in spec["prompt"]:
            raise ValueError(f"benchmark.prompt: {spec['prompt']!r} must be a string containing '{{question}}'")
    else:
        if not isinstance(spec["config"], str) or not _NAME.fullmatch(spec["config"]):
            raise ValueError(
                f"benchmark.config: {spec['config']!r} must name an OpenCompass dataset config, e.g. gsm8k_gen"
            )
        variable = spec.get("variable")
        if variable is not None and (not isinstance(variable, str) or not variable.isidentifier()):
            raise ValueError(f"benchmark.variable: {variable!r} must be a Python name, e.g. gsm8k_datasets")
    return spec


def max_out_len_of(benchmark: dict) -> int:
    """The most tokens generated per answer: the benchmark's own, else its kind's default (sizes jobs too)."""
    default = DEFAULT_CUSTOM_MAX_OUT_LEN if benchmark.get("kind") == "custom" else DEFAULT_MAX_OUT_LEN
    return benchmark.get("max_out_len", default)


def tensor_parallel_for(num_gpus: int) -> int:
    """GPUs one model is split over: the most a power of two allows (vLLM and TurboMind split
    attention heads evenly, and head counts are powers of two times a small factor)."""
    return 1 << (max(num_gpus, 1).bit_length() - 1)


def batch_size_for(backend: str, num_gpus: int) -> int:
    """The batch size of a job with `num_gpus` GPUs (0: CPU) on `backend`."""
    return BATCH_PER_GPU[backend] * max(num_gpus, 1)


def model_config(
    model_dir: Path,
    *,
    backend: str = "hf",
    num_gpus: int = 0,
    batch_size: int | None = None,
    max_seq_len: int | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    meta_template: dict | None = None,
) -> dict:
    """The OpenCompass model entry: a chat model on `backend`, greedy decoding.

    ``max_seq_len=None`` lets OpenCompass take the length from the model's config;
    ``batch_size=None`` takes `batch_size_for` the job's GPUs. vLLM and LMDeploy split the
    model over the job's GPUs (`tensor_parallel_for`: all of them when a power of two) and
    need at least one.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    batch_size = batch_size_for(backend, num_gpus) if batch_size is None else batch_size
    if num_gpus < 0 or batch_size < 1:
        raise ValueError(f"num_gpus must be >= 0 and batch_size >= 1 (got {num_gpus}, {batch_size})")
    if backend != "hf":
        if num_gpus < 1:
            raise ValueError(f"backend {backend} runs on GPUs only (got num_gpus={num_gpus}); use backend hf on CPU")
        return _engine_model_config(
            model_dir, backend, num_gpus, batch_size, max_seq_len, dtype, trust_remote_code, meta_template
        )
    model = {
        "type": BACKENDS["hf"],
        "abbr": MODEL_ABBR,
        "path": str(Path(model_dir).resolve()),
        # OpenCompass defaults trust_remote_code to True for both; we never run a model's
        # own code unless asked.
        "model_kwargs": {"trust_remote_code": trust_remote_code, "torch_dtype": dtype},
        "tokenizer_kwargs": {"trust_remote_code": trust_remote_code},
        # A model's generation_config.json may ask for sampling or beams: override both.
        "generation_kwargs": {"do_sample": False, "num_beams": 1},
        "max_out_len": DEFAULT_MAX_OUT_LEN,
        "batch_size": batch_size,
        "run_cfg": {"num_gpus": num_gpus},
    }
    if max_seq_len is None:
        max_seq_len = nested_context_length(Path(model_dir))
    if max_seq_len is not None:
        model["max_seq_len"] = max_seq_len
    if meta_template is not None:
        model["meta_template"] = meta_template
    return model


def nested_context_length(model_dir: Path) -> int | None:
    """A multimodal model's context length, which OpenCompass cannot find itself.

    OpenCompass looks for max_position_embeddings at the top of config.json only; a
    multimodal wrapper (Gemma-3's Gemma3ForConditionalGeneration) keeps it in text_config,
    and OpenCompass then stops. None when the top level has it (OpenCompass reads it) or
    nothing does.
    """
    config_file = model_dir / "config.json"
    if not config_file.is_file():
        return None
    config = json.loads(config_file.read_text(encoding="utf-8"))
    if "max_position_embeddings" in config:
        return None
    return config.get("text_config", {}).get("max_position_embeddings")


def _engine_model_config(
    model_dir, backend, num_gpus, batch_size, max_seq_len, dtype, trust_remote_code, meta_template
):
    """vLLM's or TurboMind's model entry (VLLMwithChatTemplate, TurboMindModelwithChatTemplate)."""
    model = {"type": BACKENDS[backend], "abbr": MODEL_ABBR, "path": str(Path(model_dir).resolve())}
    if backend == "vllm":
        # vLLM's LLM(...) arguments; OpenCompass defaults trust_remote_code to True.
        model["model_kwargs"] = {
            "tensor_parallel_size": tensor_parallel_for(num_gpus),
            "trust_remote_code": trust_remote_code,
            "dtype": dtype,
        }
        if max_seq_len is not None:
            model["model_kwargs"]["max_model_len"] = max_seq_len
        # Greedy: temperature 0 (the wrapper drops do_sample).
        model["generation_kwargs"] = {"temperature": 0}
    else:
        # TurboMind's engine: tp GPUs, as many sequences at once as the batch.
        model["backend"] = "turbomind"
        model["engine_config"] = {"tp": tensor_parallel_for(num_gpus), "max_batch_size": batch_size}
        if max_seq_len is not None:
            model["engine_config"]["session_len"] = max_seq_len
        if dtype == "float32":
            raise ValueError("backend lmdeploy: TurboMind computes in float16 or bfloat16, not float32")
        if dtype != "auto":
            model["engine_config"]["dtype"] = dtype
        # Greedy: top_k 1 (the paper's decoding; the wrapper also sets do_sample False);
        # the wrapper replaces max_new_tokens by each dataset's max_out_len.
        model["gen_config"] = {"top_k": 1, "temperature": 1e-6, "top_p": 0.9, "max_new_tokens": DEFAULT_MAX_OUT_LEN}
    model.update({"max_out_len": DEFAULT_MAX_OUT_LEN, "batch_size": batch_size, "run_cfg": {"num_gpus": num_gpus}})
    if max_seq_len is not None:
        model["max_seq_len"] = max_seq_len
    if meta_template is not None:
        model["meta_template"] = meta_template
    return model


def custom_datasets(spec: dict) -> list[dict]:
    """The OpenCompass dataset entry of a custom question/answer benchmark."""
    path = Path(spec["path"]).resolve()
    _check_qa_file(path)
    evaluator, _ = CUSTOM_METRICS[spec["metric"]]
    return [
        {
            "type": "opencompass.datasets.CustomDataset",
            "abbr": spec["name"],
            "path": str(path),
            "reader_cfg": {"input_columns": ["question"], "output_column": "answer"},
            "infer_cfg": {
                "prompt_template": {
                    "type": "opencompass.openicl.icl_prompt_template.PromptTemplate",
                    "template": {"round": [{"role": "HUMAN", "prompt": spec["prompt"]}]},
                },
                "retriever": {"type": "opencompass.openicl.icl_retriever.ZeroRetriever"},
                "inferencer": {
                    "type": "opencompass.openicl.icl_inferencer.GenInferencer",
                    "max_out_len": spec["max_out_len"],
                },
            },
            "eval_cfg": {
                "evaluator": {"type": evaluator},
                "pred_postprocessor": {"type": "builtins.str.strip"},
                "dataset_postprocessor": {"type": "builtins.str.strip"},
            },
        }
    ]


def opencompass_datasets(spec: dict) -> list[dict]:
    """The dataset entries of a standard OpenCompass config (e.g. gsm8k_gen), as plain data.

    Needs OpenCompass (the eval environment). mmengine writes the config's classes and
    functions as their import paths, as OpenCompass does when it saves a run's config.
    """
    from mmengine.config import Config

    config = Config.fromfile(str(_find_dataset_config(spec["config"])))
    variable = spec.get("variable")
    if variable is not None and variable not in config:
        raise ValueError(f"benchmark.variable: {spec['config']} has no {variable}")
    keys = [variable] if variable else [key for key in config if key.endswith("_datasets")]
    datasets = [dataset.to_dict() for key in keys for dataset in config[key]]
    if not datasets:
        raise ValueError(f"benchmark.config: {spec['config']} defines no *_datasets")
    try:
        plain = json.loads(json.dumps(datasets))
    except TypeError as error:
        raise ValueError(f"benchmark.config: {spec['config']} holds a value that is not plain data ({error})") from None
    if "max_out_len" in spec:
        for dataset in plain:
            dataset["infer_cfg"]["inferencer"]["max_out_len"] = spec["max_out_len"]
    return plain


_DATASET_BUILDERS = {"custom": custom_datasets, "opencompass": opencompass_datasets}


def run_config(
    model_dir: Path,
    benchmark: dict,
    *,
    backend: str = "hf",
    num_gpus: int = 0,
    batch_size: int | None = None,
    max_seq_len: int | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
) -> dict:
    """The whole OpenCompass run configuration (``models`` and ``datasets``), JSON-serialisable."""
    spec = check_benchmark(benchmark)
    # Standard benchmarks keep OpenCompass's own prompt format, as the paper's numbers do.
    meta_template = EXACT_PROMPT_META_TEMPLATE if spec["kind"] == "custom" else None
    model = model_config(
        model_dir,
        backend=backend,
        num_gpus=num_gpus,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        meta_template=meta_template,
    )
    datasets = _DATASET_BUILDERS[spec["kind"]](spec)
    abbrs = [dataset["abbr"] for dataset in datasets]
    if len(set(abbrs)) != len(abbrs):
        raise ValueError(f"benchmark {spec['name']}: dataset abbreviations repeat: {abbrs}")
    return {"models": [model], "datasets": datasets}


def evaluate(
    model_dir: Path,
    benchmark: dict,
    work_dir: Path,
    scores_csv: Path,
    *,
    predictions_json: Path | None = None,
    backend: str = "hf",
    num_gpus: int = 0,
    batch_size: int | None = None,
    max_seq_len: int | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    data_cache: Path | None = None,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Score `model_dir` on `benchmark` with OpenCompass, offline, and write its scores.

    OpenCompass runs in a fresh folder ``work_dir/<YYYYmmdd_HHMMSS>_<random>/`` (its
    configuration, log, predictions and results stay there). ``scores_csv`` and
    ``predictions_json`` (default: ``predictions.json`` beside ``scores_csv``) are
    written atomically, only once every dataset has been scored; otherwise this raises
    EvaluationError naming the dataset and the log to read. ``data_cache`` becomes
    COMPASS_DATA_CACHE, where standard benchmarks' data is read; a standard benchmark whose
    data is not there fails before OpenCompass starts (MissingDataError, naming the dataset
    and the prefetch rule), as does one whose evaluator's package is not installed.
    ``chat_template_kwargs`` (Qwen3: enable_thinking False) are set first in the model's chat
    templates, in a view of the folder inside the run folder (shadowft.chat_templates): no
    OpenCompass wrapper but vLLM's could pass them.
    """
    # Absolute: OpenCompass runs in the run folder, not in the caller's directory.
    model_dir, work_dir, scores_csv = Path(model_dir).resolve(), Path(work_dir).resolve(), Path(scores_csv)
    predictions_json = Path(predictions_json) if predictions_json else scores_csv.with_name(PREDICTIONS_FILE)
    spec = check_benchmark(benchmark)
    if not model_dir.is_dir():
        raise ValueError(f"model: {model_dir} is not a directory")
    data_cache = data_cache or os.environ.get("COMPASS_DATA_CACHE")
    if not data_cache and spec["kind"] == "opencompass":
        raise ValueError(
            f"benchmark {spec['name']}: standard OpenCompass data is read from COMPASS_DATA_CACHE; "
            "give data_cache (--data-cache) or set the variable"
        )
    config = run_config(
        model_dir,
        spec,
        backend=backend,
        num_gpus=num_gpus,
        batch_size=batch_size,
        max_seq_len=max_seq_len,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
    )
    env = {**os.environ, **_OFFLINE}
    if spec["kind"] == "opencompass":
        from shadowft.opencompass_data import check_packages, check_prefetched, evaluation_environment

        check_prefetched(spec["name"], config["datasets"], Path(data_cache))
        check_packages(spec["name"])
        env.update(evaluation_environment(spec["name"], Path(data_cache)))
    elif data_cache:
        env["COMPASS_DATA_CACHE"] = str(Path(data_cache).resolve())
    run_dir = _new_run_dir(work_dir)
    if chat_template_kwargs:
        view = with_template_defaults(model_dir, run_dir / "model", chat_template_kwargs)
        config["models"][0]["path"] = str(view)
    config_path = run_dir / RUN_CONFIG_FILE
    atomic_write_json(config_path, config)
    log_path = run_dir / RUN_LOG_FILE

    if num_gpus == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    command = [
        sys.executable,
        "-m",
        "opencompass.cli.main",
        str(config_path),
        "--work-dir",
        str(work_dir),
        # --reuse with a fresh, empty folder of our own is how OpenCompass is told which
        # folder to write; there is nothing in it to reuse.
        "--reuse",
        run_dir.name,
        # In-process tasks: a failure exits non-zero (without --debug a failed task still
        # exits 0) and one interpreter starts instead of three.
        "--debug",
    ]
    log.info("OpenCompass (%s): %s on %s, log %s", backend, model_dir, spec["name"], log_path)
    # Which devices the job was given (SLURM sets CUDA_VISIBLE_DEVICES for a GPU job).
    log.info("devices: %d GPU(s), CUDA_VISIBLE_DEVICES=%s", num_gpus, os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    started = time.monotonic()
    # OpenCompass writes scratch files (tmp/, .cache/) into its working directory.
    with open(log_path, "w", encoding="utf-8") as log_file:
        returncode = subprocess.run(
            command, check=False, cwd=run_dir, env=env, stdout=log_file, stderr=subprocess.STDOUT
        ).returncode
    log.info("OpenCompass finished in %.1f s with exit code %d", time.monotonic() - started, returncode)
    abbrs = [dataset["abbr"] for dataset in config["datasets"]]
    if returncode != 0:
        datasets = f"dataset {abbrs[0]}" if len(abbrs) == 1 else f"{len(abbrs)} datasets"
        raise EvaluationError(
            f"OpenCompass failed (exit code {returncode}) scoring {model_dir} on benchmark {spec['name']} "
            f"({datasets}); read {log_path}. Its last lines:\n{_tail(log_path)}"
        )

    metric_names = {CUSTOM_METRICS[spec["metric"]][1]: spec["metric"]} if spec["kind"] == "custom" else None
    rows, predictions = collect_results(run_dir, spec["name"], abbrs, log_path=log_path, metric_names=metric_names)
    atomic_write_json(predictions_json, predictions)
    write_scores(rows, scores_csv)


def collect_results(
    run_dir: Path,
    benchmark: str,
    dataset_abbrs: list[str],
    *,
    log_path: Path | None = None,
    metric_names: dict[str, str] | None = None,
) -> tuple[list[dict], dict]:
    """The scores rows and the predictions (by dataset) of one OpenCompass run folder.

    OpenCompass exits 0 even when a task failed, so every dataset's results JSON must exist,
    hold no ``error`` and hold at least one numeric metric, and its predictions must exist;
    otherwise EvaluationError names the dataset and the log to read. ``metric_names`` maps
    the results keys to report to the names they get; None reports every numeric key as is.
    """
    run_dir = Path(run_dir)
    hint = f"read {log_path or run_dir / 'logs'}"
    rows, predictions = [], {}
    for abbr in dataset_abbrs:
        results_path = run_dir / "results" / MODEL_ABBR / f"{abbr}.json"
        results = _read_run_json(results_path, f"benchmark {benchmark}: the results of dataset {abbr}", hint)
        if "error" in results:
            raise EvaluationError(
                f"benchmark {benchmark}: OpenCompass could not score dataset {abbr}: {results['error']}; {hint}"
            )
        scores = {key: value for key, value in results.items() if _is_number(value)}
        if metric_names is not None:
            absent = sorted(metric_names.keys() - scores.keys())
            if absent:
                raise EvaluationError(
                    f"benchmark {benchmark}: dataset {abbr} has no {', '.join(absent)} in {results_path}; {hint}"
                )
            scores = {metric_names[key]: scores[key] for key in metric_names}
        if not scores:
            raise EvaluationError(
                f"benchmark {benchmark}: dataset {abbr} has no numeric score in {results_path}; {hint}"
            )
        predictions_path = run_dir / "predictions" / MODEL_ABBR / f"{abbr}.json"
        predictions[abbr] = _read_run_json(
            predictions_path, f"benchmark {benchmark}: the predictions of dataset {abbr}", hint
        )
        rows.extend(
            {
                "benchmark": benchmark,
                "dataset": abbr,
                "metric": metric,
                "score": float(score),
                "num_examples": len(predictions[abbr]),
            }
            for metric, score in scores.items()
        )
    return rows, predictions


def write_scores(rows: list[dict], path: Path) -> None:
    """Write scores rows as a tidy CSV (SCORES_COLUMNS), atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SCORES_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows({column: row[column] for column in SCORES_COLUMNS} for row in rows)
    atomic_write_text(Path(path), buffer.getvalue())


def read_scores(path: Path) -> list[dict]:
    """Read a scores.csv: one dict per row, score a float, num_examples an int (stdlib only)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != SCORES_COLUMNS:
            raise ValueError(f"{path}: columns are {reader.fieldnames}, expected {list(SCORES_COLUMNS)}")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                rows.append({**row, "score": float(row["score"]), "num_examples": int(row["num_examples"])})
            except (TypeError, ValueError):
                raise ValueError(
                    f"{path}, line {line}: score must be a number and num_examples an integer: {row}"
                ) from None
    return rows


def _check_qa_file(path: Path) -> None:
    """Fail early, naming the line, on what OpenCompass would only reject mid-run."""
    if not path.is_file():
        raise ValueError(f"benchmark.path: {path} is not a file")
    count = 0
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                raise ValueError(f"{path}, line {number}: empty line")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
            if not isinstance(record, dict) or not all(
                isinstance(record.get(key), str) for key in ("question", "answer")
            ):
                raise ValueError(f'{path}, line {number}: expected {{"question": str, "answer": str}}')
            count += 1
    if count == 0:
        raise ValueError(f"benchmark.path: {path} holds no questions")


def _find_dataset_config(name: str) -> Path:
    """The file of a dataset config: a module path (found without importing it) or a file name under
    OpenCompass's configs/datasets/."""
    import importlib.util

    import opencompass

    if "." in name:
        top, *rest = name.split(".")
        spec = importlib.util.find_spec(top)
        path = Path(spec.submodule_search_locations[0], *rest[:-1], f"{rest[-1]}.py") if spec and rest else None
        if path is None or not path.is_file():
            raise ValueError(f"benchmark.config: no config module {name} (looked for {path})")
        return path
    root = Path(opencompass.__file__).parent / "configs" / "datasets"
    matches = sorted(root.rglob(f"{name}.py"))
    if len(matches) != 1:
        found = ", ".join(str(match.relative_to(root)) for match in matches) or "none"
        raise ValueError(f"benchmark.config: {name} must match exactly one file under {root} (found {found})")
    return matches[0]


def _new_run_dir(work_dir: Path) -> Path:
    """A folder of this run's own under `work_dir`, named like OpenCompass's timestamps."""
    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = work_dir / f"{datetime.now():%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"
    run_dir.mkdir()  # exclusive: never share a folder with another run
    return run_dir


def _read_run_json(path: Path, what: str, hint: str) -> dict:
    if not path.is_file():
        raise EvaluationError(f"{what}: OpenCompass wrote no {path}; {hint}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{what}: {path} is not JSON ({error}); {hint}") from None
    if not isinstance(value, dict):
        raise EvaluationError(f"{what}: {path} is not a JSON object; {hint}")
    return value


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _tail(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(collections.deque(f, maxlen=_LOG_TAIL_LINES)).rstrip("\n")


def _benchmark_argument(text: str) -> dict:
    """--benchmark-json: inline JSON, or the path of a JSON file."""
    try:
        source = text if text.lstrip().startswith("{") else Path(text).read_text(encoding="utf-8")
        benchmark = json.loads(source)
    except (OSError, json.JSONDecodeError) as error:
        raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None
    if not isinstance(benchmark, dict):
        raise argparse.ArgumentTypeError(f"{text!r}: not a JSON object")
    return benchmark


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shadowft.opencompass", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("evaluate", help="score a model on a benchmark and write scores.csv")
    run.add_argument("--model", type=Path, required=True, help="Hugging Face model folder")
    run.add_argument(
        "--benchmark-json",
        type=_benchmark_argument,
        required=True,
        metavar="FILE_OR_JSON",
        help="the benchmark spec: a JSON file or inline JSON",
    )
    run.add_argument("--work-dir", type=Path, required=True, help="OpenCompass runs in a new folder under it")
    run.add_argument("--scores", type=Path, required=True, help="the scores.csv to write")
    run.add_argument(
        "--predictions", type=Path, help=f"the predictions JSON to write (default: {PREDICTIONS_FILE} beside --scores)"
    )
    run.add_argument("--backend", choices=BACKENDS, default="hf", help="the inference backend (default hf)")
    run.add_argument("--num-gpus", type=int, default=0, help="GPUs for the model; 0 runs on CPU (default)")
    run.add_argument("--batch-size", type=int, help="default: from the backend and the GPUs (batch_size_for)")
    run.add_argument("--max-seq-len", type=int, help="default: from the model's config")
    run.add_argument("--dtype", choices=DTYPES, default="auto")
    run.add_argument("--trust-remote-code", action="store_true", help="allow the model folder's own Python code")
    run.add_argument(
        "--chat-template-kwargs",
        type=json.loads,
        default={},
        help="JSON object: arguments the chat template is rendered with, e.g. '{\"enable_thinking\": false}'",
    )
    run.add_argument("--data-cache", type=Path, help="COMPASS_DATA_CACHE: the prefetched standard datasets")
    fetch = commands.add_parser("prefetch", help="put standard benchmarks' data into a COMPASS_DATA_CACHE")
    fetch.add_argument(
        "--benchmarks-json", type=_benchmark_argument, required=True, help="{name: spec}: a JSON file or inline JSON"
    )
    fetch.add_argument("--data-cache", type=Path, required=True, help="the COMPASS_DATA_CACHE folder to fill")
    fetch.add_argument("--manifest", type=Path, required=True, help="the manifest (JSON, sha256 per file) to write")
    fetch.add_argument(
        "--urls", type=_benchmark_argument, help="DATASETS_URL entries ({key: {url, md5}}) to use first: JSON or a file"
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "prefetch":
        from shadowft.opencompass_data import MissingDataError, prefetch

        try:
            prefetch(args.benchmarks_json, args.data_cache, args.manifest, urls=args.urls)
        except (MissingDataError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    try:
        evaluate(
            args.model,
            args.benchmark_json,
            args.work_dir,
            args.scores,
            predictions_json=args.predictions,
            backend=args.backend,
            num_gpus=args.num_gpus,
            batch_size=args.batch_size,
            max_seq_len=args.max_seq_len,
            dtype=args.dtype,
            trust_remote_code=args.trust_remote_code,
            data_cache=args.data_cache,
            chat_template_kwargs=args.chat_template_kwargs,
        )
    except (EvaluationError, ValueError, RuntimeError, ModuleNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
