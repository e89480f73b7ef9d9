"""Atomic outputs and file hashes, shared by every part of the package.

Standard library only: the train and eval environments import this module
from the repository root without shadowft's dependencies installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

_HASH_BLOCK = 8 << 20


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes `final` on success.

    The directory is created beside `final` (same filesystem, so the rename is
    atomic) as `.{final.name}.tmp-<random>`. On success it replaces `final`,
    including an existing one; on any exception it is removed. A process that is
    killed outright leaves only the dot-named temporary directory, which no
    reader treats as an output.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        yield tmp
        _replace_directory(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_directory(src: Path, final: Path) -> None:
    # rename() cannot replace a non-empty directory: move the old one aside
    # first, so `final` is either the old or the new complete directory.
    if final.is_symlink() or final.is_file():
        final.unlink()
    elif final.exists():
        old = final.parent / f".{final.name}.old-{secrets.token_hex(4)}"
        os.rename(final, old)
        os.rename(src, final)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(src, final)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file and os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{secrets.token_hex(4)}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: object) -> None:
    """Write `obj` as indented JSON (trailing newline) to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's contents, read in blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def raise_on_sigterm() -> None:
    """Turn SIGTERM (scancel, Snakemake stopping a job) into SystemExit.

    Python's default SIGTERM handling exits without unwinding, so `atomic_directory`
    would leave its temporary directory behind; as an exception, it cleans up.
    """
    signal.signal(signal.SIGTERM, _exit_on_signal)


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)
