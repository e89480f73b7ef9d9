"""Benchmark planning: how long `snakemake -n` takes on a sweep of about 1,000 jobs.

Builds a complete config whose sweep plans about a thousand jobs (two pairs; stages sft and
dpo; LoRA at three learning rates and two ranks, full at three learning rates; seven graft
strengths; two benchmarks), on sparse local models (real safetensors headers, data a file
hole: the plan sizes every job from them at no disk cost), and times the workflow's dry run
as a whole process, several times. The baseline, measured in the same run, is the demo's dry
run (33 jobs): the ratio says what the sweep adds over Snakemake's start-up and the
workflow's parsing. CPU time (user + system of the Snakemake process) is reported beside the
wall time: on a machine shared with other jobs it is the steadier figure, and on an idle one
the wall time of this single-threaded dry run is close to it. Usage:

  python speed/plan.py [--dir /tmp/plan-bench] [--repeats 5] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from model_fixtures import write_sparse_model  # noqa: E402

PAIRS = ("p1", "p2")
SWEEP = {
    "stages": ["sft", "dpo"],
    "tunings": ["lora", "full"],
    "learning_rates": {"lora": [1.0e-4, 2.0e-4, 5.0e-4], "full": [5.0e-6, 1.0e-5, 2.0e-5]},
    "lora_ranks": [8, 16],
}
ALPHAS = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0]
BENCHMARKS = ("held_out_a", "held_out_b")


def write_inputs(folder: Path) -> Path:
    """The sparse model, a dataset folder (SFT and preference data, held-out questions), the sweep's config."""
    model = write_sparse_model(folder / "model", 500_000_000, shards=1)
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    info = {
        "sft": {"file_name": "train.json", "formatting": "sharegpt"},
        "pref": {"file_name": "pref.json", "formatting": "sharegpt", "ranking": True},
    }
    (data / "dataset_info.json").write_text(json.dumps(info))
    (data / "train.json").write_text("[]\n")
    (data / "pref.json").write_text("[]\n")
    (data / "eval.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    config = {
        "models": {
            f"{pair}-{role}": {"source": "local", "path": str(model)} for pair in PAIRS for role in ("base", "instruct")
        },
        "pairs": {pair: {"base": f"{pair}-base", "instruct": f"{pair}-instruct", "template": "qwen"} for pair in PAIRS},
        "datasets": {"sft": {"source": "local", "path": str(data)}},
        "training": {"dataset": "sft", "preference_dataset": "sft", **SWEEP},
        "graft": {"alphas": ALPHAS},
        "evaluation": {"benchmarks": {name: {"kind": "custom", "dataset": "sft"} for name in BENCHMARKS}},
    }
    path = folder / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dry_run(workdir: Path, configfile: Path) -> tuple[float, float, int]:
    """Wall and CPU seconds of one `snakemake -n` from the repository root, and the jobs it planned."""
    workdir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--snakefile", str(ROOT / "Snakefile")]
    command += ["--directory", str(workdir), "--configfile", str(configfile)]
    output = workdir / "dry-run.txt"
    started = time.perf_counter()
    with open(output, "w") as sink:
        child = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    seconds = time.perf_counter() - started
    text = output.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"dry run failed:\n{text[-6000:]}")
    total = re.search(r"^total\s+(\d+)\s*$", text, re.MULTILINE)
    return seconds, usage.ru_utime + usage.ru_stime, int(total.group(1)) if total else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/plan-bench"), help="scratch folder (emptied)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    shutil.rmtree(options.dir, ignore_errors=True)
    options.dir.mkdir(parents=True)
    sweep = write_inputs(options.dir)
    demo = ROOT / "config" / "config.yaml"

    figures = {}
    for name, configfile in (("demo", demo), ("sweep", sweep)):
        runs = [dry_run(options.dir / f"work-{name}", configfile) for _ in range(options.repeats)]
        walls, cpus = [run[0] for run in runs], [run[1] for run in runs]
        figures[name] = {
            "jobs": runs[0][2],
            "median_s": statistics.median(walls),
            "median_cpu_s": statistics.median(cpus),
            "runs_s": walls,
        }
    ratio = figures["sweep"]["median_s"] / figures["demo"]["median_s"]
    cpu_ratio = figures["sweep"]["median_cpu_s"] / figures["demo"]["median_cpu_s"]
    print(f"snakemake -n, {options.repeats} runs each (medians), load average {os.getloadavg()[0]:.1f}:")
    for name, figure in figures.items():
        runs = ", ".join(f"{s:.2f}" for s in figure["runs_s"])
        print(
            f"  {name:5s} {figure['jobs']:5d} jobs  wall {figure['median_s']:.2f} s  "
            f"CPU {figure['median_cpu_s']:.2f} s  (wall runs: {runs})"
        )
    print(f"  sweep / demo: {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU; target: the sweep under 3 s")
    if options.json:
        options.json.write_text(json.dumps({**figures, "ratio": ratio, "cpu_ratio": cpu_ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
