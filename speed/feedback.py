"""How long the project's own loop takes, and where the time goes: the demo DAG, the quick tests
and (with --full) the whole suite, for this checkout and for a baseline commit, measured in the
same run on the same machine, one after the other.

Each commit is cloned into a scratch folder (the checkout's environments linked, not rebuilt),
then, per commit:

- the demo from scratch (`snakemake --cores 2`): its wall time, and per rule the jobs' time
  (Snakemake's benchmark files) split into tool start-up and model work where the job's log
  says how long the work took (OpenCompass's run, LLaMA-Factory's training);
- Snakemake's planning alone (a dry run of the finished demo, which has nothing to do);
- the quick tests (`pytest -m "not slow"`);
- with --full, the whole suite with every test's time (`--durations=0`), grouped by file.

    python speed/feedback.py --baseline 3d1bd7a [--full] [--dir /tmp/feedback] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What a job's log says of its own work, in seconds.
WORK_IN_LOG = {
    "evaluate": re.compile(r"(?:OpenCompass|the run) finished in ([0-9.]+) s"),
}


def clone(commit: str, folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(folder)], check=True)
    subprocess.run(["git", "-C", str(folder), "checkout", "-q", commit], check=True)
    (folder / ".venvs").symlink_to(ROOT / ".venvs")
    return folder


def timed(command: list[str], cwd: Path, log: Path) -> float:
    started = time.monotonic()
    with open(log, "w") as sink:
        result = subprocess.run(command, cwd=cwd, stdout=sink, stderr=subprocess.STDOUT)
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed in {cwd}; read {log}")
    return seconds


def training_work(model: Path) -> float | None:
    record = model / "shadowft_launch.json"
    return json.loads(record.read_text())["seconds"] if record.is_file() else None


def demo_breakdown(run: Path) -> dict[str, dict[str, float]]:
    """Per rule: jobs, their seconds in all, and of those the work their logs account for."""
    rules: dict[str, dict[str, float]] = defaultdict(lambda: {"jobs": 0, "seconds": 0.0, "work": 0.0})
    for tsv in sorted((run / "benchmarks").rglob("*.tsv")):
        seconds = float(tsv.read_text().splitlines()[1].split("\t")[0])
        relative = tsv.relative_to(run / "benchmarks").with_suffix("")
        rule = _rule_of(relative)
        rules[rule]["jobs"] += 1
        rules[rule]["seconds"] += seconds
        log = run / "logs" / relative.with_suffix(".log")
        if rule in WORK_IN_LOG and log.is_file():
            found = WORK_IN_LOG[rule].search(log.read_text())
            rules[rule]["work"] += float(found.group(1)) if found else 0.0
        elif rule in ("train", "demo_train"):
            rules[rule]["work"] += training_work(_model_of(run, relative)) or 0.0
    return dict(rules)


def _rule_of(relative: Path) -> str:
    top = relative.parts[0]
    if top == "demo":
        return "demo_train"
    if top == "delta":
        return {"extract": "extract_delta", "similarity": "similarity"}.get(relative.name, "graft")
    if top == "train" and relative.name.endswith("_merge"):
        return "merge_adapter"
    return {"evaluate": "evaluate", "train": "train"}.get(top, top)


def _model_of(run: Path, relative: Path) -> Path:
    if relative.parts[0] == "demo":
        return run / "data" / "demo" / relative.name.removesuffix("_train") / "model"
    _, pair, name, role = relative.parts
    return run / "results" / pair / name / f"train_{role}" / "model"


def suite_by_file(junit: Path) -> dict[str, float]:
    files: dict[str, float] = defaultdict(float)
    for case in ElementTree.parse(junit).getroot().iter("testcase"):
        files[case.get("classname").rsplit(".", 1)[-1]] += float(case.get("time"))
    return dict(sorted(files.items(), key=lambda item: -item[1]))


def measure(checkout: Path, scratch: Path, full: bool) -> dict:
    python = checkout / ".venvs" / "core" / "bin" / "python"
    demo = scratch / "demo"
    shutil.rmtree(demo, ignore_errors=True)
    snakemake = [str(python), "-m", "snakemake", "--snakefile", str(checkout / "Snakefile"), "--directory", str(demo)]
    figures = {"demo_s": timed([*snakemake, "--cores", "2"], checkout, scratch / "demo.log")}
    figures["plan_s"] = timed([*snakemake, "-n", "--cores", "2"], checkout, scratch / "plan.log")
    figures["demo_rules"] = demo_breakdown(demo)
    quick = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow"]
    figures["quick_s"] = timed(quick, checkout, scratch / "quick.log")
    if full:
        junit = scratch / "suite.xml"
        suite = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=0", f"--junitxml={junit}"]
        figures["suite_s"] = timed(suite, checkout, scratch / "suite.log")
        figures["suite_files"] = suite_by_file(junit)
    return figures


def report(results: dict[str, dict]) -> str:
    labels = list(results)
    lines = ["| | " + " | ".join(labels) + (" | ratio |" if len(labels) == 2 else " |")]
    lines.append("| :-- | " + " | ".join("--:" for _ in labels) + (" | --: |" if len(labels) == 2 else " |"))
    for key, name in (("demo_s", "demo DAG (s)"), ("plan_s", "planning, nothing to do (s)"),
                      ("quick_s", "quick tests (s)"), ("suite_s", "whole suite (s)")):  # fmt: skip
        values = [results[label].get(key) for label in labels]
        if any(value is None for value in values):
            continue
        ratio = f" | {values[0] / values[1]:.2f}x" if len(values) == 2 else ""
        lines.append(f"| {name} | " + " | ".join(f"{value:.0f}" for value in values) + ratio + " |")
    for label in labels:
        lines += ["", f"{label}: the demo's jobs by rule (seconds of job time; work: what the logs account for)", ""]
        lines += ["| rule | jobs | seconds | work | start-up and the rest |", "| :-- | --: | --: | --: | --: |"]
        for rule, figure in sorted(results[label]["demo_rules"].items(), key=lambda item: -item[1]["seconds"]):
            rest = figure["seconds"] - figure["work"] if figure["work"] else float("nan")
            lines.append(
                f"| {rule} | {figure['jobs']:.0f} | {figure['seconds']:.1f} | {figure['work']:.1f} | {rest:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", help="a commit to measure first, in the same run")
    parser.add_argument("--full", action="store_true", help="also the whole suite (over an hour on old commits)")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/feedback"))
    parser.add_argument("--json", type=Path, help="also write the figures here")
    options = parser.parse_args()
    options.dir.mkdir(parents=True, exist_ok=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commits = ([options.baseline] if options.baseline else []) + [head.stdout.strip()]
    results = {}
    for commit in commits:
        scratch = options.dir / commit
        scratch.mkdir(exist_ok=True)
        checkout = clone(commit, scratch / "checkout")
        results[commit] = measure(checkout, scratch, options.full)
        print(f"{commit}: {json.dumps({k: v for k, v in results[commit].items() if k.endswith('_s')})}", flush=True)
    print(report(results))
    if options.json:
        options.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
