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

The work is done in modules with one job each (docs/architecture.md has the map):
`shadowft.opencompass_spec` (the benchmark spec and its defaults), `shadowft.opencompass_models`
(the model entry per backend, `ModelOptions`), `shadowft.opencompass_config` (the run configuration),
`shadowft.opencompass_run` (`evaluate`, `EvaluateOptions`), `shadowft.opencompass_results`
(results, predictions and scores.csv) and `shadowft.opencompass_data` (standard benchmarks'
data). This module re-exports their public names and is the command line the rules call.

Module top level is stdlib-only: this runs in the eval environment with the repository on
PYTHONPATH, and the core environment imports it (the report takes `SCORES_COLUMNS`, job
sizing `max_out_len_of`) without OpenCompass. `read_scores` is the plain reader of the
scores.csv format `write_scores` writes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from shadowft.opencompass_config import EXACT_PROMPT_META_TEMPLATE, custom_datasets, opencompass_datasets, run_config
from shadowft.opencompass_models import (
    BACKEND_ENVS,
    BACKENDS,
    BATCH_PER_GPU,
    CPU_BATCH,
    DTYPES,
    MODEL_ABBR,
    ModelOptions,
    batch_size_for,
    model_config,
    nested_context_length,
    tensor_parallel_for,
)
from shadowft.opencompass_results import (
    PREDICTIONS_FILE,
    SCORES_COLUMNS,
    EvaluationError,
    collect_results,
    read_scores,
    write_scores,
)
from shadowft.opencompass_run import RUN_CONFIG_FILE, RUN_LOG_FILE, EvaluateOptions, evaluate
from shadowft.opencompass_spec import (
    CUSTOM_METRICS,
    DEFAULT_CUSTOM_MAX_OUT_LEN,
    DEFAULT_MAX_OUT_LEN,
    DEFAULT_PROMPT,
    check_benchmark,
    max_out_len_of,
)

__all__ = [
    "BACKENDS",
    "BACKEND_ENVS",
    "BATCH_PER_GPU",
    "CPU_BATCH",
    "CUSTOM_METRICS",
    "DEFAULT_CUSTOM_MAX_OUT_LEN",
    "DEFAULT_MAX_OUT_LEN",
    "DEFAULT_PROMPT",
    "DTYPES",
    "EXACT_PROMPT_META_TEMPLATE",
    "MODEL_ABBR",
    "PREDICTIONS_FILE",
    "RUN_CONFIG_FILE",
    "RUN_LOG_FILE",
    "SCORES_COLUMNS",
    "EvaluateOptions",
    "EvaluationError",
    "ModelOptions",
    "batch_size_for",
    "check_benchmark",
    "collect_results",
    "custom_datasets",
    "evaluate",
    "main",
    "max_out_len_of",
    "model_config",
    "nested_context_length",
    "opencompass_datasets",
    "read_scores",
    "run_config",
    "tensor_parallel_for",
    "write_scores",
]


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


def _parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "prefetch":
        from shadowft.opencompass_data import MissingDataError, prefetch

        try:
            prefetch(args.benchmarks_json, args.data_cache, args.manifest, urls=args.urls)
        except (MissingDataError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        return 0
    model = ModelOptions(
        backend=args.backend,
        num_gpus=args.num_gpus,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        dtype=args.dtype,
        trust_remote_code=args.trust_remote_code,
    )
    options = EvaluateOptions(
        predictions_json=args.predictions,
        model=model,
        data_cache=args.data_cache,
        chat_template_kwargs=args.chat_template_kwargs,
    )
    try:
        evaluate(args.model, args.benchmark_json, args.work_dir, args.scores, options)
    except (EvaluationError, ValueError, RuntimeError, ModuleNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
