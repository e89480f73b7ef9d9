"""Warm workers: a command's heavy imports paid once per session rather than once per job.

Importing OpenCompass (with torch and transformers) takes 10-14 s on 2 CPU cores and
LLaMA-Factory about as long, while scoring the demo's 200 questions or tuning its tiny model
takes seconds: started afresh, each job of a local run would spend most of its time importing.
So a room's command line (``python -m shadowft.evaluation ...``) first asks a *worker* of its
environment to run it: a process that imported the room's heavy modules once and forks one
child per job. The child runs the room's ``main`` with the job's arguments, working folder,
environment variables, standard output and error (their file descriptors are passed over the
worker's socket), and its exit status is the job's. Forked from the same imports, it computes
what a fresh process computes.

A worker serves only jobs that gain from it and that it can serve faithfully:

- local jobs: under SLURM (``SLURM_JOB_ID``) a job's processes end with the job, and nodes
  share nothing, so each job runs in its own process;
- CPU jobs: a GPU job's start-up is small beside its work, and CUDA must not meet a fork;
- not when ``SHADOWFT_WORKERS=0``: that is the switch to run every job in its own process.

A worker is found by a key of its interpreter, its room, the package's source files (their
paths, sizes and modification times) and the thread settings its libraries read once
(``OMP_NUM_THREADS`` and the like), so a changed checkout never runs in an old worker and a job
computes with the threads it asked for. It
exits after `IDLE_SECONDS` without a job. ``SHADOWFT_WORKER_IDLE`` (seconds) changes that for the
workers a run starts. A job whose client is interrupted (SIGTERM, SIGINT)
ends its child the same way, so atomic outputs are cleaned up as usual. When no worker can be
reached, the job runs in its own process, as it would without workers.

Standard library only: every environment imports it.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# A worker exits when it has had no job for this long.
IDLE_SECONDS = 120
# How long a job waits for a worker it started to be ready (the imports).
START_SECONDS = 180
_PACKAGE = Path(__file__).resolve().parent
# Read once by the libraries a worker imports (OpenMP, BLAS threads): a worker serves only jobs
# that set them as the job that started it did.
_KEY_ENVIRONMENT = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "GOTO_NUM_THREADS",
)
_HEADER = struct.Struct("!I")
# The longest path a Unix socket may have (sun_path, with its terminating zero byte).
_SOCKET_PATH_LIMIT = 108


def enabled() -> bool:
    """Whether this job may ask a worker: a local one, unless switched off (see the module docstring)."""
    if os.environ.get("SHADOWFT_WORKERS", "1") == "0" or os.environ.get("SHADOWFT_IN_WORKER"):
        return False
    return "SLURM_JOB_ID" not in os.environ


def run_command(
    room: str,
    main: Callable[[list[str]], int | None],
    argv: Sequence[str],
    *,
    warm: Callable[[list[str]], bool],
) -> int:
    """Run `main(argv)`, the command line of `room` (``shadowft.evaluation``), in a warm worker
    when `enabled` and `warm(argv)` (the room's say: a CPU job that gains from it), else in this
    process; return its exit status."""
    argv = list(argv)
    if enabled() and warm(argv):
        status = _run_in_worker(room, argv)
        if status is not None:
            return status
    return _exit_status(main, argv)


def _exit_status(main: Callable[[list[str]], int | None], argv: list[str]) -> int:
    try:
        status = main(argv)
    except SystemExit as stop:
        status = stop.code
    if status is None:
        return 0
    if isinstance(status, int):
        return status
    print(status, file=sys.stderr)  # sys.exit("message")
    return 1


def workers_folder() -> Path:
    """The folder of this user's workers: their sockets, locks, logs and process ids."""
    folder = Path(tempfile.gettempdir()) / f"shadowft-workers-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def stop_workers() -> list[int]:
    """Stop every worker of this user (each cleans up after itself); return their process ids."""
    stopped = []
    for pid_file in workers_folder().glob("*.pid"):
        try:
            pid = int(pid_file.read_text())
            os.kill(pid, signal.SIGTERM)
            stopped.append(pid)
        except (ValueError, ProcessLookupError):
            pid_file.unlink(missing_ok=True)
    return stopped


def socket_path(room: str) -> Path:
    """Where the worker of `room` for this interpreter, this checkout's code and this job's
    thread settings listens."""
    fingerprint = hashlib.sha256(f"{sys.executable}\0{room}".encode())
    for name in _KEY_ENVIRONMENT:
        fingerprint.update(f"\0{name}={os.environ.get(name)}".encode())
    for path in sorted(_PACKAGE.rglob("*.py")):
        stat = path.stat()
        fingerprint.update(f"\0{path.relative_to(_PACKAGE)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return workers_folder() / f"{fingerprint.hexdigest()[:16]}.sock"


def _run_in_worker(room: str, argv: list[str]) -> int | None:
    """The job's exit status from a worker, or None when no worker could take it."""
    path = socket_path(room)
    if len(os.fsencode(path)) >= _SOCKET_PATH_LIMIT:
        return None
    connection = _connect(path) or _start_worker(room, path)
    if connection is None:
        return None
    with connection:
        request = {"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
        # Interrupted, the job ends its child: closing the connection tells it to stop. Set before
        # the request goes, since the child may start (and be signalled) before it returns.
        stops = (signal.SIGTERM, signal.SIGINT)
        previous = {stop: signal.signal(stop, lambda number, frame: os._exit(128 + number)) for stop in stops}
        try:
            _send(connection, json.dumps(request).encode(), fds=[sys.stdout.fileno(), sys.stderr.fileno()])
        except OSError:
            for stop, handler in previous.items():
                signal.signal(stop, handler)
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        reply, _ = _receive(connection)
    if reply is None:
        print("shadowft: the worker ended without an exit status", file=sys.stderr)
        return 1
    return int(json.loads(reply)["status"])


def _connect(path: Path) -> socket.socket | None:
    connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        connection.connect(os.fspath(path))
    except OSError:
        connection.close()
        return None
    return connection


def _start_worker(room: str, path: Path) -> socket.socket | None:
    """Start the worker of `room` (once, whatever the jobs starting at the same moment) and
    connect to it when it is ready; None when it did not come up."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        connection = _connect(path)
        if connection is not None:
            return connection
        log = open(path.with_suffix(".log"), "ab")  # noqa: SIM115 (the worker's own output, kept open by it)
        worker = subprocess.Popen(
            [sys.executable, "-m", "shadowft.workers", room, os.fspath(path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
        )
        log.close()
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline and worker.poll() is None:
            connection = _connect(path)
            if connection is not None:
                return connection
            time.sleep(0.05)
    return None


def _send(connection: socket.socket, payload: bytes, fds: Sequence[int] = ()) -> None:
    message = _HEADER.pack(len(payload)) + payload
    if fds:
        socket.send_fds(connection, [message], list(fds))
    else:
        connection.sendall(message)


def _receive(connection: socket.socket, fds: int = 0) -> tuple[bytes | None, list[int]]:
    """One message and the descriptors sent with it (up to `fds`); None when the other side closed first."""
    data, received = b"", []
    while len(data) < _HEADER.size:
        chunk, got, _, _ = socket.recv_fds(connection, 1 << 16, fds) if fds else (connection.recv(1 << 16), [], 0, 0)
        if not chunk:
            return None, received
        data += chunk
        received += got
    (length,) = _HEADER.unpack(data[: _HEADER.size])
    while len(data) < _HEADER.size + length:
        chunk = connection.recv(1 << 16)
        if not chunk:
            return None, received
        data += chunk
    return data[_HEADER.size :], received


# ---- the worker ---------------------------------------------------------------------------


def serve(room: str, path: Path, *, idle_seconds: float = IDLE_SECONDS) -> None:
    """Import `room`'s command line and what it declares heavy (its ``WARM_IMPORTS``, after its
    ``WARM_ENVIRONMENT`` is set), then run each job that connects in a forked child."""
    command = importlib.import_module(f"{room}.__main__")
    os.environ.update(getattr(command, "WARM_ENVIRONMENT", {}))
    for module in getattr(command, "WARM_IMPORTS", ()):
        importlib.import_module(module)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the system
    signal.signal(signal.SIGTERM, lambda number, frame: sys.exit(128 + number))  # the socket goes too
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if path.exists():
        path.unlink()  # a stale socket: the lock holder found nobody listening on it
    listener.bind(os.fspath(path))
    listener.listen(16)
    path.with_suffix(".pid").write_text(str(os.getpid()))
    print(f"shadowft worker {os.getpid()} of {room} ready at {path}", flush=True)
    try:
        while select.select([listener], [], [], idle_seconds)[0]:
            connection, _ = listener.accept()
            if os.fork() == 0:
                listener.close()
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                _run_job(command.main, connection)  # never returns
            connection.close()
    finally:
        listener.close()
        for leftover in (path, path.with_suffix(".pid"), path.with_suffix(".lock"), path.with_suffix(".log")):
            leftover.unlink(missing_ok=True)  # a worker that crashed leaves its log


def _run_job(main: Callable[[list[str]], int | None], connection: socket.socket) -> None:
    """In the forked child: become the job, run it, send its exit status, exit."""
    status = 1
    try:
        request, (stdout, stderr) = _receive(connection, fds=2)
        if request is None:
            os._exit(1)
        job = json.loads(request)
        os.dup2(stdout, 1)
        os.dup2(stderr, 2)
        os.close(stdout)
        os.close(stderr)
        os.chdir(job["cwd"])
        _replace_environment(job["env"])
        os.environ["SHADOWFT_IN_WORKER"] = "1"
        sys.argv = [sys.argv[0], *job["argv"]]
        threading.Thread(target=_stop_when_client_leaves, args=(connection,), daemon=True).start()
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        status = _exit_status(main, job["argv"])
    except BaseException:  # the job's own failure, reported where the job's output goes
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            _send(connection, json.dumps({"status": status}).encode())
        finally:
            os._exit(status)


def _replace_environment(env: Mapping[str, str]) -> None:
    for name in set(os.environ) - set(env):
        del os.environ[name]
    os.environ.update(env)


def _stop_when_client_leaves(connection: socket.socket) -> None:
    """The client closes the connection only when it was interrupted: stop the job as SIGTERM would."""
    while True:
        readable, _, _ = select.select([connection], [], [])
        if readable and not connection.recv(1, socket.MSG_PEEK):
            os.kill(os.getpid(), signal.SIGTERM)
            return


if __name__ == "__main__":
    serve(sys.argv[1], Path(sys.argv[2]), idle_seconds=float(os.environ.get("SHADOWFT_WORKER_IDLE", IDLE_SECONDS)))
