#!/usr/bin/env python3
"""The demo on one NVIDIA GPU, through the workflow, in a few minutes: a check that training,
grafting and evaluation run on CUDA as they do on the CPU.

    python3 speed/gpu_check.py [--cpu] [--wheelhouse DIR] [--work DIR] [--budget SECONDS]

It prints one line per step, ``[gpu-check] <step>: ok|FAILED|SKIPPED <detail>``:

- device: the interpreter's torch, the GPU, whether it computes in bf16;
- env core|train|eval: the checkout's .venvs/<env>, or one built over the machine's own torch
  (``--system-site-packages``) from the env file's pins, torch and DeepSpeed left out (one GPU needs
  no ZeRO-3), installed from ``--wheelhouse`` without the network;
- workflow: the demo through Snakemake (build the pair, fine-tune both with LoRA and full in bf16,
  merge, extract, graft at alpha 1, evaluate every variant with the hf backend, report), then one
  line per job from its Snakemake benchmark file: its wall time, and for training the device and
  compute dtype LLaMA-Factory logged, for an evaluation the GPUs it had and its score;
- checks: every tuning ran on cuda in bf16, every evaluation had a GPU, the report exists;
- lmdeploy|vllm: where a Python holds the engine and OpenCompass, Instruct scored on demo_chat with
  that backend; otherwise skipped (their wheels, 101 MB and over 400 MB, do not fit the 64 MB
  a device run may carry).

``--cpu`` runs the same path with the GPU hidden (CUDA_VISIBLE_DEVICES empty), fine-tuning in
float32 (transformers refuses bf16 training on a CPU), and expects cpu where the GPU run expects
cuda; the engines are skipped. The exit status is 1 when a step fails.
Standard library only: it runs under the machine's Python, before any environment exists.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "envs"))
import build_venvs  # noqa: E402

ENVS = ("core", "train", "eval")
# Left to the machine: its own CUDA torch (and what must match it), and ZeRO-3, which one GPU does not use.
MACHINE_PACKAGES = {"torch", "torchvision", "torchaudio", "deepspeed"}
ENGINES = ("lmdeploy", "vllm")
# LLaMA-Factory's line naming the device and the compute dtype of a run (llamafactory.hparams.parser).
DEVICE_LINE = re.compile(r"device: (\S+), distributed training: \S+, compute dtype: (\S+)")
failures: list[str] = []


def report(step: str, status: str, detail: str = "", seconds: float | None = None) -> None:
    timing = f" in {seconds:.1f} s" if seconds is not None else ""
    print(f"[gpu-check] {step}: {status}{' ' + detail if detail else ''}{timing}", flush=True)
    if status == "FAILED":
        failures.append(step)


def run(command: list[str], *, env: dict | None = None, timeout: float, log: Path | None = None):
    """Run `command`; its output to `log` (or captured); return (exit code, output tail, seconds)."""
    started = time.monotonic()
    try:
        if log is None:
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
            output = result.stdout + result.stderr
        else:
            with open(log, "w") as handle:
                result = subprocess.run(command, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
            output = log.read_text(errors="replace")
        code = result.returncode
    except subprocess.TimeoutExpired:
        code, output = 124, f"timed out after {timeout:.0f} s"
    return code, output[-1500:], time.monotonic() - started


def check_device(cpu: bool) -> dict:
    code = (
        "import json, torch\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'available': cuda,\n"
        "    'name': torch.cuda.get_device_name(0) if cuda else None,\n"
        "    'bf16': cuda and torch.cuda.is_bf16_supported()}))\n"
    )
    code_status, output, seconds = run([sys.executable, "-c", code], timeout=120)
    if code_status != 0:
        report("device", "FAILED", f"no torch in {sys.executable}: {output.strip().splitlines()[-1:]}", seconds)
        return {}
    device = json.loads(output.strip().splitlines()[-1])
    detail = f"torch {device['torch']} (CUDA {device['cuda']})"
    if cpu:
        report("device", "ok", f"{detail}; --cpu: the GPU is hidden from every job", seconds)
    elif not device["available"]:
        report("device", "FAILED", f"{detail}: torch sees no GPU", seconds)
    else:
        report("device", "ok", f"{detail}, {device['name']}, bf16 {'yes' if device['bf16'] else 'NO'}", seconds)
        if not device["bf16"]:
            failures.append("device bf16")
    return device


def ensure_env(name: str, wheelhouse: Path | None, timeout: float) -> bool:
    """The checkout's .venvs/<name>: there already, or built over this machine's torch from the wheelhouse."""
    python = ROOT / ".venvs" / name / "bin" / "python"
    if python.exists():
        report(f"env {name}", "ok", f"found {python.parent.parent}")
        return True
    if wheelhouse is None:
        report(f"env {name}", "SKIPPED", f"no {python.parent.parent} and no --wheelhouse to build it from")
        return False
    requirements = [
        line
        for line in build_venvs.pip_requirements(ROOT / "envs" / f"{name}.yaml")
        if re.split(r"[=<>!~; \[]", line, maxsplit=1)[0].lower() not in MACHINE_PACKAGES
    ]
    started = time.monotonic()
    target = python.parent.parent
    code, output, _ = run([sys.executable, "-m", "venv", "--system-site-packages", str(target)], timeout=120)
    if code == 0:
        install = [str(python), "-m", "pip", "install", "--no-index", "--find-links", str(wheelhouse), *requirements]
        code, output, _ = run(install, timeout=timeout)
    if code != 0:
        shutil.rmtree(target, ignore_errors=True)
        report(
            f"env {name}",
            "FAILED",
            f"pip from {wheelhouse}: {output.strip().splitlines()[-1:]}",
            time.monotonic() - started,
        )
        return False
    report(f"env {name}", "ok", f"built over the machine's torch from {wheelhouse}", time.monotonic() - started)
    return True


def check_config(work: Path, bf16: bool) -> Path:
    """The demo's config, grafted at alpha 1 only, its fine-tuning in bf16 (the paper's setting) where
    `bf16` (transformers refuses bf16 training on a CPU)."""
    edit = (
        "import sys, yaml\n"
        "config = yaml.safe_load(open(sys.argv[1]))\n"
        f"config['training']['hyperparameters']['common']['bf16'] = {bf16}\n"
        "config['graft']['alphas'] = [1.0]\n"
        "yaml.safe_dump(config, open(sys.argv[2], 'w'), sort_keys=False)\n"
    )
    path = work / "gpu_check.yaml"
    core = ROOT / ".venvs" / "core" / "bin" / "python"
    code, output, _ = run([str(core), "-c", edit, str(ROOT / "config" / "config.yaml"), str(path)], timeout=120)
    if code != 0:
        raise RuntimeError(f"could not write {path}: {output}")
    return path


def run_workflow(work: Path, config: Path, env: dict, timeout: float) -> bool:
    core = ROOT / ".venvs" / "core" / "bin" / "python"
    command = [str(core), "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory", str(work)]
    command += ["--configfile", str(config), "--cores", "all"]
    code, output, seconds = run(command, env=env, timeout=timeout, log=work / "snakemake.log")
    if code != 0:
        report("workflow", "FAILED", f"exit {code}, {work / 'snakemake.log'}:\n{output}", seconds)
        return False
    jobs = sum(1 for _ in (work / "benchmarks").rglob("*.tsv"))
    report("workflow", "ok", f"{jobs} timed jobs, results in {work / 'results'}", seconds)
    return True


def job_lines(work: Path, expected_device: str) -> None:
    """One line per job, in the order they finished, from Snakemake's benchmark files and the job logs."""
    trained, evaluated = [], []
    for tsv in sorted((work / "benchmarks").rglob("*.tsv"), key=lambda path: path.stat().st_mtime):
        with open(tsv, newline="") as handle:
            seconds = float(next(csv.DictReader(handle, delimiter="\t"))["s"])
        job = str(tsv.relative_to(work / "benchmarks").with_suffix(""))
        detail = ""
        log = work / "logs" / tsv.relative_to(work / "benchmarks").with_suffix(".log")
        trains = job.startswith("demo/") or (job.startswith("train/") and not job.endswith("_merge"))
        if trains:
            match = DEVICE_LINE.search(log.read_text(errors="replace")) if log.is_file() else None
            detail = f"device {match[1]}, compute dtype {match[2]}" if match else f"no device line in {log}"
            if job.startswith("train/"):
                trained.append((job, match))
        elif job.startswith("evaluate/"):
            text = log.read_text(errors="replace") if log.is_file() else ""
            gpus = re.search(r"devices: (\d+) GPU", text)
            _, pair, *variant_and_benchmark = Path(job).parts
            scores = work / "results" / pair / "eval" / Path(*variant_and_benchmark) / "scores.csv"
            rows = list(csv.DictReader(open(scores))) if scores.is_file() else []
            detail = f"{gpus[1] if gpus else '?'} GPU(s), " + ", ".join(
                f"{r['metric']} {float(r['score']):.1f}" for r in rows
            )
            evaluated.append((job, gpus))
        report(job, "ok", detail, seconds)
    # LLaMA-Factory names the dtype it computes in: bf16 on the GPU; None (float32) where --cpu turned bf16 off.
    dtype = "torch.bfloat16" if expected_device == "cuda" else "None"
    wrong = [
        job for job, match in trained if not match or not match[1].startswith(expected_device) or match[2] != dtype
    ]
    report(
        "checks: tuning",
        "FAILED" if wrong or not trained else "ok",
        f"{len(trained)} runs, each on {expected_device}, compute dtype {dtype}"
        if not wrong
        else f"not on {expected_device} with compute dtype {dtype}: {wrong}",
    )
    gpus_expected = "0" if expected_device == "cpu" else "1"
    wrong = [job for job, gpus in evaluated if not gpus or gpus[1] != gpus_expected]
    report(
        "checks: evaluation",
        "FAILED" if wrong or not evaluated else "ok",
        f"{len(evaluated)} evaluations with {gpus_expected} GPU(s)" if not wrong else f"wrong devices: {wrong}",
    )
    summary = work / "results" / "summary.md"
    report("checks: report", "ok" if summary.is_file() else "FAILED", str(summary))


def engine_python(engine: str) -> Path | None:
    """A Python that imports the engine and OpenCompass: its own environment's, the eval one, or this one."""
    for python in (
        ROOT / ".venvs" / engine / "bin" / "python",
        ROOT / ".venvs" / "eval" / "bin" / "python",
        Path(sys.executable),
    ):
        if python.exists() and run([str(python), "-c", f"import {engine}, opencompass"], timeout=300)[0] == 0:
            return python
    return None


def check_engine(engine: str, work: Path, cpu: bool, timeout: float) -> None:
    if cpu:
        report(engine, "SKIPPED", "GPU only")
        return
    python = engine_python(engine)
    if python is None:
        report(
            engine,
            "SKIPPED",
            f"no Python here imports {engine} and opencompass (envs/{engine}.yaml; too large to carry to a device)",
        )
        return
    benchmark = {
        "name": "demo_chat",
        "kind": "custom",
        "path": str(work / "data" / "demo" / "demo_chat" / "eval.jsonl"),
        "max_out_len": 24,
    }
    out = work / "engines" / engine
    command = [
        str(python),
        "-m",
        "shadowft.evaluation",
        "evaluate",
        "--model",
        str(work / "data" / "demo" / "instruct" / "model"),
    ]
    command += [
        "--benchmark-json",
        json.dumps(benchmark),
        "--work-dir",
        str(out / "opencompass"),
        "--scores",
        str(out / "scores.csv"),
    ]
    command += ["--backend", engine, "--num-gpus", "1"]
    out.mkdir(parents=True, exist_ok=True)
    code, output, seconds = run(
        command, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=timeout, log=out / "evaluate.log"
    )
    if code != 0:
        report(engine, "FAILED", f"{out / 'evaluate.log'}:\n{output}", seconds)
        return
    (row,) = csv.DictReader(open(out / "scores.csv"))
    report(engine, "ok", f"Instruct on demo_chat: {row['metric']} {float(row['score']):.1f} ({python})", seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cpu", action="store_true", help="the same steps with the GPU hidden (a dry run)")
    parser.add_argument("--wheelhouse", type=Path, help="wheels to build missing environments from, offline")
    parser.add_argument("--work", type=Path, default=Path("/tmp/shadowft-gpu-check"), help="the workflow's folder")
    parser.add_argument("--budget", type=float, default=540, help="seconds for everything (default 540)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.budget
    if not check_device(args.cpu):
        return 1
    if failures:
        return 1
    ready = [ensure_env(name, args.wheelhouse, timeout=max(deadline - time.monotonic(), 1)) for name in ENVS]
    if not all(ready):
        report("workflow", "SKIPPED", "an environment is missing")
        return 1
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if args.cpu else {})}
    config = check_config(args.work, bf16=not args.cpu)
    # The engines get what the workflow leaves; each needs a minute or two to start.
    engines_share = 0 if args.cpu else 150
    if run_workflow(args.work, config, env, timeout=max(deadline - time.monotonic() - engines_share, 1)):
        job_lines(args.work, "cpu" if args.cpu else "cuda")
        for engine in ENGINES:
            check_engine(engine, args.work, args.cpu, timeout=max(deadline - time.monotonic(), 1))
    print(f"[gpu-check] done: {'FAILED ' + ', '.join(failures) if failures else 'every step ok'}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
