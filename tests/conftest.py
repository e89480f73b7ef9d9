"""Shared test plumbing: where the checkout and its environments are, and the demo run."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".venvs"
# Every workflow a test runs sees this hub token (unless the test sets its own), so any
# run's outputs can be searched for it: a token must never reach a log, config or result.
FAKE_HUB_TOKEN = "hf_ShadowftTestToken9f8e7d6c5b4a3210"
# The folders build_demo writes, in its arguments' order, named as rules/demo.smk names them under data/demo/.
DEMO_FOLDERS = ("init", "pretrain", "demo_chat", "demo_task", "demo_preference")


@pytest.fixture(scope="session", autouse=True)
def no_workers_left():
    """The warm workers (shadowft.workers) the session's runs start are stopped when it ends."""
    yield
    from shadowft.workers import stop_workers

    stop_workers()


def demo_runs() -> dict[str, str]:
    """The default config's run names by tuning ("lora", "full"), as shadowft.workflow.sweep names them."""
    import yaml

    from shadowft.workflow.config import validate_config
    from shadowft.workflow.sweep import runs

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    validate_config(config)
    return {run.tuning: run.name for run in runs(config)}


def snakemake_command(
    workdir: Path, *args: str, checkout: Path = ROOT, name_demo_config: bool = True
) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run a checkout's workflow (this one's by default) in `workdir`.

    Without a `--configfile` in `args` the demo config is named, unless `name_demo_config` is
    false: then the Snakefile's own `configfile:` directive reads it."""
    if "--configfile" not in args and name_demo_config:
        args = (*args, "--configfile", str(checkout / "config" / "config.yaml"))
    snakefile = str(checkout / "Snakefile")
    command = [sys.executable, "-m", "snakemake", "--snakefile", snakefile, "--directory", str(workdir)]
    env = {"HF_TOKEN": FAKE_HUB_TOKEN, **os.environ}
    if not (any("slurm" in arg for arg in args) and "-n" not in args):
        # Snakemake's SLURM plugin asks `scontrol show config` when it is imported, which waits
        # 10 s where the client is installed and no controller answers; an empty configuration
        # makes scontrol fail at once (docs/pitfalls.md). Only runs that submit to SLURM ask it.
        env["SLURM_CONF"] = "/dev/null"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    return [*command, *args], env


def snakemake(
    workdir: Path, *args: str, check: bool = True, timeout: int = 1800, **checkout
) -> subprocess.CompletedProcess:
    """Run a checkout's workflow with `workdir` holding data/, results/ and logs/ (`checkout`:
    snakemake_command's keywords)."""
    command, env = snakemake_command(workdir, *args, **checkout)
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}")
    return result


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """The whole demo DAG run locally once per test session: the reference other runs compare with."""
    workdir = tmp_path_factory.mktemp("demo")
    started = time.monotonic()
    snakemake(workdir, "--cores", "2", timeout=1200)
    print(f"demo DAG wall time: {time.monotonic() - started:.0f} s")
    return workdir


def with_demo_pair(workdir: Path, demo_run: Path) -> Path:
    """`workdir` holding the session's demo pair and data (data/demo/, times kept): a test that
    needs the pair trains or scores from it instead of building and pre-training it again."""
    shutil.copytree(demo_run / "data" / "demo", workdir / "data" / "demo", symlinks=True, dirs_exist_ok=True)
    return workdir
