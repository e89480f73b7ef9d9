"""Warm workers (shadowft.workers): a job run by a worker is the job run afresh, only sooner.

A small room of the tests' own (`room` below) stands for shadowft.evaluation: its command line
reports what it sees (arguments, folder, environment, the import it declared warm) and can
fail, sleep or be interrupted; each test runs it as a job would, `python -m room ...`."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT

ROOM = """
import os, signal, sys, time
from pathlib import Path

from shadowft.workers import run_command

WARM_ENVIRONMENT = {"ROOM_WARM_SETTING": "set before the warm imports"}
WARM_IMPORTS = ("room.heavy",)


def main(argv):
    import room.heavy

    if argv[0] == "fail":
        print("failing as asked", file=sys.stderr)
        return int(argv[1])
    if argv[0] == "sleep":
        def stopped(number, frame):
            Path(argv[1]).write_text("stopped")
            sys.exit(143)
        signal.signal(signal.SIGTERM, stopped)
        Path(argv[1] + ".started").write_text(str(os.getpid()))
        time.sleep(60)
        return 0
    print(f"argv={argv} cwd={os.getcwd()} job={os.environ.get('JOB_SETTING')} pid={os.getpid()}")
    print(f"imported at {room.heavy.IMPORTED_BY} warm={room.heavy.SETTING}")
    print("to stderr", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_command("room", main, sys.argv[1:], warm=lambda argv: argv[0] != "cold"))
"""


@pytest.fixture
def room(tmp_path, monkeypatch):
    """The room's package, and the environment its jobs run in (their own workers' folder)."""
    package = tmp_path / "pkg" / "room"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(textwrap.dedent(ROOM))
    (package / "heavy.py").write_text(
        "import os\nIMPORTED_BY = os.getpid()\nSETTING = os.environ.get('ROOM_WARM_SETTING')\n"
    )
    # A short folder: a Unix socket's path is limited to 107 bytes.
    workers = Path(tempfile.mkdtemp(prefix="sw", dir="/tmp"))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "pkg"), str(ROOT)]),
        "TMPDIR": str(workers),
        "SHADOWFT_WORKER_IDLE": "20",
    }
    env.pop("SHADOWFT_WORKERS", None)
    yield env
    for pid in worker_pids(workers):
        os.kill(pid, signal.SIGTERM)
    shutil.rmtree(workers, ignore_errors=True)


def worker_pids(folder: Path) -> list[int]:
    found = []
    for line in subprocess.run(["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True).stdout.splitlines():
        if "shadowft.workers" in line and str(folder) in line:
            found.append(int(line.split()[0]))
    return found


def job(env, *argv, cwd, **settings):
    return subprocess.run(
        [sys.executable, "-m", "room", *argv],
        cwd=cwd,
        env={**env, **settings},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_job_in_a_worker_sees_its_own_arguments_folder_environment_and_output(room, tmp_path):
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first = job(room, "report", "x y", cwd=first_dir, JOB_SETTING="one")
    second = job(room, "report", "z", cwd=second_dir, JOB_SETTING="two")
    cold = job(room, "cold", cwd=first_dir, JOB_SETTING="three")
    for result in (first, second, cold):
        assert result.returncode == 0, result.stderr
        assert result.stderr == "to stderr\n"
    assert f"argv=['report', 'x y'] cwd={first_dir} job=one" in first.stdout
    assert f"argv=['report', 'z'] cwd={second_dir} job=two" in second.stdout
    assert f"argv=['cold'] cwd={first_dir} job=three" in cold.stdout

    def pid_and_importer(result):
        pid = int(result.stdout.split("pid=")[1].split()[0])
        importer = int(result.stdout.split("imported at ")[1].split()[0])
        return pid, importer

    first_pid, first_importer = pid_and_importer(first)
    second_pid, second_importer = pid_and_importer(second)
    cold_pid, cold_importer = pid_and_importer(cold)
    # Two children of one worker, which imported the warm module once, before either.
    assert first_importer == second_importer != first_pid != second_pid
    assert "warm=set before the warm imports" in first.stdout
    # A job its room keeps cold imports in its own process, without the worker's setting.
    assert cold_importer == cold_pid and "warm=None" in cold.stdout


def test_the_exit_status_and_the_error_output_are_the_jobs(room, tmp_path):
    result = job(room, "fail", "3", cwd=tmp_path)
    assert result.returncode == 3
    assert result.stderr == "failing as asked\n"


@pytest.mark.parametrize("setting", [{"SHADOWFT_WORKERS": "0"}, {"SLURM_JOB_ID": "42"}])
def test_no_worker_when_switched_off_or_under_slurm(room, tmp_path, setting):
    result = job(room, "report", cwd=tmp_path, **setting)
    pid = int(result.stdout.split("pid=")[1].split()[0])
    assert f"imported at {pid} " in result.stdout, "the job imported for itself"
    assert not worker_pids(Path(room["TMPDIR"]))


def test_a_job_whose_client_is_stopped_stops_as_sigterm_would_stop_it(room, tmp_path):
    marker = tmp_path / "stopped"
    client = subprocess.Popen([sys.executable, "-m", "room", "sleep", str(marker)], cwd=tmp_path, env=room)
    started = Path(f"{marker}.started")
    deadline = time.monotonic() + 60
    while not (started.exists() and started.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)  # written by the child, maybe not yet whole
    child = int(started.read_text())
    assert child != client.pid, "the job runs in the worker's child"
    client.send_signal(signal.SIGTERM)
    assert client.wait(timeout=30) == 128 + signal.SIGTERM
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert marker.read_text() == "stopped"


def test_a_changed_checkout_or_thread_setting_gets_a_worker_of_its_own(room, tmp_path):
    job(room, "report", cwd=tmp_path)
    job(room, "report", cwd=tmp_path, OMP_NUM_THREADS="1")
    assert len(worker_pids(Path(room["TMPDIR"]))) == 2
    code = "from shadowft.workers import socket_path; print(socket_path('room'))"
    before = subprocess.run([sys.executable, "-c", code], env=room, capture_output=True, text=True).stdout
    source = ROOT / "shadowft" / "workers.py"
    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    try:
        after = subprocess.run([sys.executable, "-c", code], env=room, capture_output=True, text=True).stdout
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert before and after and before != after


def test_an_idle_worker_exits(room, tmp_path):
    job(room, "report", cwd=tmp_path, SHADOWFT_WORKER_IDLE="1")
    folder = Path(room["TMPDIR"])
    deadline = time.monotonic() + 30
    while worker_pids(folder) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not worker_pids(folder)
    assert not list(folder.rglob("*.sock")), "it takes its socket with it"
