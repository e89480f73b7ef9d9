"""One OpenCompass run, offline, in a fresh folder of its own: `evaluate` scores one model on one benchmark.

OpenCompass runs in this process (the eval environment, with the repository on PYTHONPATH), as
its own command line would, behind a check that every prompt and its answer fit the model's window
(shadowft.evaluation.launch, shadowft.evaluation.context). Its scores and predictions are copied to
fixed paths once every dataset has been scored (shadowft.evaluation.results). A warm worker
(shadowft.workers) runs this process already past OpenCompass's imports.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import secrets
import sys
import time
import traceback
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from shadowft.evaluation.chat_templates import with_template_defaults
from shadowft.evaluation.context import CONTEXT_FILE, ContextLengthError, RunFit, context_window
from shadowft.evaluation.launch import REFUSED
from shadowft.evaluation.models import ModelOptions
from shadowft.evaluation.results import (
    PREDICTIONS_FILE,
    EvaluationError,
    collect_results,
    grade_answers,
    write_scores,
)
from shadowft.evaluation.run_config import run_config
from shadowft.evaluation.spec import BenchmarkSpec
from shadowft.io import atomic_write_json
from shadowft.versions import HARDWARE_FILE, Hardware

RUN_CONFIG_FILE = "shadowft_run.json"
RUN_LOG_FILE = "opencompass.log"

# Evaluation runs offline; huggingface_hub and transformers read these when imported.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
_LOG_TAIL_LINES = 20

# The logger of the OpenCompass face (shadowft.evaluation), as the evaluation logs have always named it.
log = logging.getLogger("shadowft.evaluation")


@dataclass(frozen=True)
class EvaluateOptions:
    """How `evaluate` runs the model, and the paths it may be given besides the four it always needs."""

    # default: predictions.json beside the scores
    predictions_json: Path | None = None
    # the machine the run had (shadowft.versions.Hardware); default: hardware.json beside the scores
    hardware_json: Path | None = None
    model: ModelOptions = field(default_factory=ModelOptions)
    # COMPASS_DATA_CACHE, where standard benchmarks' data is read (default: the variable)
    data_cache: Path | None = None
    # set first in the model's chat templates (Qwen3: enable_thinking False)
    chat_template_kwargs: Mapping[str, Any] | None = None


def evaluate(
    model_dir: Path,
    spec: BenchmarkSpec,
    work_dir: Path,
    scores_csv: Path,
    options: EvaluateOptions | None = None,
) -> None:
    """Score `model_dir` on the benchmark `spec` with OpenCompass, offline, and write its scores.

    OpenCompass runs in a fresh folder ``work_dir/<YYYYmmdd_HHMMSS>_<random>/`` (its
    configuration, log, predictions and results stay there). ``scores_csv``,
    ``options.predictions_json`` (default: ``predictions.json`` beside ``scores_csv``; a custom
    benchmark's answers graded one by one, `grade_answers`) and ``options.hardware_json`` (the
    machine, default ``hardware.json`` beside ``scores_csv``) are written atomically, only once
    every dataset has been scored; otherwise this raises
    EvaluationError naming the dataset and the log to read. ``options.data_cache`` becomes
    COMPASS_DATA_CACHE, where standard benchmarks' data is read; a standard benchmark whose
    data is not there fails before OpenCompass starts (MissingDataError, naming the dataset
    and the prefetch rule), as does one whose evaluator's package is not installed. So does a
    benchmark with a prompt that, with its answer, would not fit the model's max_seq_len
    (ContextLengthError, naming the model's limit and what the datasets need): OpenCompass never
    starts. ``options.chat_template_kwargs`` (Qwen3: enable_thinking False) are set first in the model's
    chat templates, in a view of the folder inside the run folder (shadowft.evaluation.chat_templates): no
    OpenCompass wrapper but vLLM's could pass them.
    """
    options = options or EvaluateOptions()
    # Absolute: OpenCompass runs in the run folder, not in the caller's directory.
    model_dir, work_dir, scores_csv = Path(model_dir).resolve(), Path(work_dir).resolve(), Path(scores_csv)
    predictions_json = Path(options.predictions_json or scores_csv.with_name(PREDICTIONS_FILE))
    hardware_json = Path(options.hardware_json or scores_csv.with_name(HARDWARE_FILE))
    if not model_dir.is_dir():
        raise ValueError(f"model: {model_dir} is not a directory")
    data_cache = _data_cache(spec, options.data_cache)
    window = context_window(model_dir, options.model.max_seq_len)
    log.info("context: %s", window.describe())
    config = run_config(model_dir, spec, options.model)
    env = _environment(spec, config, data_cache, options.model.num_gpus)
    run_dir = _new_run_dir(work_dir)
    if options.chat_template_kwargs:
        view = with_template_defaults(model_dir, run_dir / "model", options.chat_template_kwargs)
        config["models"][0]["path"] = str(view)
    atomic_write_json(run_dir / RUN_CONFIG_FILE, config)
    log_path = run_dir / RUN_LOG_FILE
    log.info("OpenCompass (%s): %s on %s, log %s", options.model.backend, model_dir, spec.name, log_path)
    returncode = _run_opencompass(run_dir, env, log_path, options.model)
    if returncode == REFUSED:
        raise ContextLengthError(RunFit.read(run_dir / CONTEXT_FILE).refusal(spec.name, window))
    if (run_dir / CONTEXT_FILE).is_file():
        for line in RunFit.read(run_dir / CONTEXT_FILE).lines():
            log.info("context: %s", line)
    abbrs = [dataset["abbr"] for dataset in config["datasets"]]
    if returncode != 0:
        datasets = f"dataset {abbrs[0]}" if len(abbrs) == 1 else f"{len(abbrs)} datasets"
        raise EvaluationError(
            f"OpenCompass failed (exit status {returncode}) scoring {model_dir} on benchmark {spec.name} "
            f"({datasets}); read {log_path}. Its last lines:\n{_tail(log_path)}"
        )
    metric_names = {spec.score_key: spec.metric} if spec.score_key else None
    rows, predictions = collect_results(run_dir, spec.name, abbrs, log_path=log_path, metric_names=metric_names)
    if spec.kind == "custom":
        rows = grade_answers(spec, rows, predictions)
    atomic_write_json(predictions_json, predictions)
    Hardware.here().write(hardware_json)
    write_scores(rows, scores_csv)


def _data_cache(spec: BenchmarkSpec, given: Path | None) -> str | Path | None:
    """COMPASS_DATA_CACHE: the folder given, else the variable's; a standard benchmark needs one."""
    data_cache = given or os.environ.get("COMPASS_DATA_CACHE")
    if not data_cache and spec.kind == "opencompass":
        raise ValueError(
            f"benchmark {spec.name}: standard OpenCompass data is read from COMPASS_DATA_CACHE; "
            "give data_cache (--data-cache) or set the variable"
        )
    return data_cache


def _environment(spec: BenchmarkSpec, config: dict, data_cache: str | Path | None, num_gpus: int) -> dict[str, str]:
    """OpenCompass's environment: offline, this package importable, its data cache, and no GPU on a CPU run.

    A standard benchmark's data and evaluator packages are checked here, before OpenCompass starts.
    """
    env = {**os.environ, **OFFLINE}
    if spec.kind == "opencompass":
        from shadowft.evaluation.cache import check_packages, check_prefetched, evaluation_environment

        check_prefetched(spec.name, config["datasets"], Path(data_cache))
        check_packages(spec.name)
        env.update(evaluation_environment(spec.name, Path(data_cache)))
    elif data_cache:
        env["COMPASS_DATA_CACHE"] = str(Path(data_cache).resolve())
    if num_gpus == 0:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _run_opencompass(run_dir: Path, env: dict[str, str], log_path: Path, model: ModelOptions) -> int:
    """Run OpenCompass (behind the context check) on the run folder's configuration in this process,
    its output to `log_path`; return its exit status (launch.REFUSED: a prompt did not fit,
    OpenCompass never started)."""
    argv = [
        *(["--trust-remote-code"] if model.trust_remote_code else []),
        str(run_dir / RUN_CONFIG_FILE),
        "--work-dir",
        str(run_dir.parent),
        # --reuse with a fresh, empty folder of our own is how OpenCompass is told which
        # folder to write; there is nothing in it to reuse.
        "--reuse",
        run_dir.name,
        # In-process tasks: a failing task raises (without --debug it would still exit 0), and
        # the model and datasets load in this process, whose imports a warm worker made already.
        "--debug",
    ]
    # Which devices the job was given (SLURM sets CUDA_VISIBLE_DEVICES for a GPU job).
    log.info(
        "devices: %d GPU(s), CUDA_VISIBLE_DEVICES=%s", model.num_gpus, os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)")
    )
    started = time.monotonic()
    # OpenCompass writes scratch files (tmp/, .cache/) into its working directory.
    with _as_process(["shadowft.evaluation.launch", *argv], cwd=run_dir, env=env, output=log_path):
        # After the environment: huggingface_hub and transformers read the offline switches at import.
        from shadowft.evaluation.launch import main as launch

        try:
            status = launch(argv)
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
        except Exception:  # OpenCompass's own failure: its traceback goes to its log, as it would
            traceback.print_exc()
            status = 1
    log.info("the run finished in %.1f s with exit status %d", time.monotonic() - started, status)
    return status


@contextlib.contextmanager
def _as_process(argv: list[str], *, cwd: Path, env: Mapping[str, str], output: Path) -> Iterator[None]:
    """Inside the block, this process looks like a fresh one started with `argv` in `cwd` with
    the environment `env`, its standard output and error going to `output`; restored after."""
    saved_argv, saved_cwd, saved_env = sys.argv, os.getcwd(), dict(os.environ)
    sys.stdout.flush()
    sys.stderr.flush()
    saved_fds = os.dup(1), os.dup(2)
    try:
        with open(output, "w", encoding="utf-8") as sink:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            os.environ.clear()
            os.environ.update(env)
            os.chdir(cwd)
            sys.argv = argv
            try:
                yield
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
    finally:
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)


def _new_run_dir(work_dir: Path) -> Path:
    """A folder of this run's own under `work_dir`, named like OpenCompass's timestamps."""
    work_dir.mkdir(parents=True, exist_ok=True)
    run_dir = work_dir / f"{datetime.now():%Y%m%d_%H%M%S}_{secrets.token_hex(3)}"
    run_dir.mkdir()  # exclusive: never share a folder with another run
    return run_dir


def _tail(path: Path) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return "".join(collections.deque(f, maxlen=_LOG_TAIL_LINES)).rstrip("\n")
