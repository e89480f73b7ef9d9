"""Faults and secrets, measured on real workflow runs: a hub token set in the environment
reaches no file the run writes, and a second run in the same folder is refused."""

import os
import signal
import subprocess
import time

import pytest
from conftest import FAKE_HUB_TOKEN, snakemake, snakemake_command


@pytest.mark.slow
def test_the_hub_token_reaches_no_file_of_a_whole_run(demo_run):
    """The demo ran with HF_TOKEN set (conftest): search every log, config, manifest and result."""
    searched, hits = 0, []
    for folder, _, names in os.walk(demo_run):
        for name in names:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            searched += 1
            with open(path, "rb") as handle:
                if FAKE_HUB_TOKEN.encode() in handle.read():
                    hits.append(os.path.relpath(path, demo_run))
    assert searched > 100
    assert hits == []


@pytest.mark.slow
def test_a_second_run_in_the_same_folder_is_refused_and_the_first_goes_on(tmp_path):
    command, env = snakemake_command(tmp_path, "--cores", "1", "data/demo/base/model")
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        locks = tmp_path / ".snakemake" / "locks"
        deadline = time.monotonic() + 120
        while not (locks.is_dir() and any(locks.iterdir())):
            assert first.poll() is None, first.stdout.read()
            assert time.monotonic() < deadline, "the first run never took its lock"
            time.sleep(0.2)
        second = snakemake(tmp_path, "--cores", "1", "data/demo/base/model", check=False)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
        assert first.poll() is None, "the refused run must not disturb the running one"
    finally:
        if first.poll() is None:
            first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
