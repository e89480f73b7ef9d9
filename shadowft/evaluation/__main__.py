"""The evaluation room's command line, which the workflow's evaluation rules call in the evaluation
environment: prefetch a standard benchmark's data, score one model on one benchmark.

    python -m shadowft.evaluation prefetch --benchmarks-json JSON --data-cache DIR --manifest OUT
    python -m shadowft.evaluation evaluate --model DIR --benchmark-json JSON --work-dir DIR --scores OUT ...

Module top level is standard library only, like every module of shadowft.evaluation but the
OpenCompass run itself: the core environment reads the catalog and the scores without OpenCompass.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from shadowft.evaluation.models import BACKENDS, DTYPES, ModelOptions
from shadowft.evaluation.results import PREDICTIONS_FILE, EvaluationError
from shadowft.evaluation.run import OFFLINE, EvaluateOptions, evaluate
from shadowft.evaluation.spec import BenchmarkSpec
from shadowft.io import raise_on_sigterm
from shadowft.versions import HARDWARE_FILE
from shadowft.workers import run_command

# What a warm worker (shadowft.workers) imports once for every CPU evaluation of a local run:
# OpenCompass's command line, and with it torch and transformers, offline as evaluation runs.
WARM_ENVIRONMENT = OFFLINE
WARM_IMPORTS = ("opencompass.cli.main",)


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
    parser = argparse.ArgumentParser(prog="python -m shadowft.evaluation", description=__doc__.split("\n\n")[0])
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
    run.add_argument(
        "--hardware", type=Path, help=f"the machine's record to write (default: {HARDWARE_FILE} beside --scores)"
    )
    run.add_argument("--backend", choices=BACKENDS, default="hf", help="the inference backend (default hf)")
    run.add_argument("--num-gpus", type=int, default=0, help="GPUs for the model; 0 runs on CPU (default)")
    run.add_argument("--batch-size", type=int, help="default: from the backend and the GPUs (batch_size_for)")
    run.add_argument(
        "--max-seq-len", type=int, help="the model's window (default: the paper's 16384), capped by its config.json"
    )
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
    raise_on_sigterm()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.command == "prefetch":
        from shadowft.evaluation.cache import MissingDataError, prefetch

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
        hardware_json=args.hardware,
        model=model,
        data_cache=args.data_cache,
        chat_template_kwargs=args.chat_template_kwargs,
    )
    try:
        spec = BenchmarkSpec.from_mapping(args.benchmark_json)
        evaluate(args.model, spec, args.work_dir, args.scores, options)
    except (EvaluationError, ValueError, TypeError, RuntimeError, ModuleNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _warm(argv: list[str]) -> bool:
    """Whether a warm worker may run these arguments: an evaluation on the CPU."""
    args, _ = _parser().parse_known_args(argv)
    return args.command == "evaluate" and args.num_gpus == 0


if __name__ == "__main__":
    sys.exit(run_command("shadowft.evaluation", main, sys.argv[1:], warm=_warm))
