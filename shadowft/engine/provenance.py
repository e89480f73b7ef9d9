"""Hashing and provenance: which input files an output came from, with their sha256.

Manifests record the sha256 of every input file. Hashing a model costs about
as much CPU as grafting it, so a digest is computed at most once per file:

- a file a shadowft download (``shadowft.data.hub``) verified and recorded in its
  folder's ``shadowft_manifest.json`` is taken from there, while the file is
  unchanged since (same size, changed no later than the manifest was written);
- any other digest is computed on a background thread while the engine
  streams, and remembered in a cache keyed by the file's identity and times
  (``file_sha256``), so grafting the same inputs again costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shadowft.engine.layout import DELTA_MANIFEST, MODEL_MANIFEST, WEIGHT_SUFFIXES, DeltaError
from shadowft.io import atomic_write_json, sha256_file


def _hash_cache_dir() -> Path | None:
    configured = os.environ.get("SHADOWFT_CACHE_DIR")
    if configured is not None:
        return Path(configured) if configured else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shadowft"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, remembered across runs while the file stays the same.

    Hashing a large model costs seconds per GB, and grafting the same inputs at
    several alphas would pay it every time. The digest is cached under
    ``$SHADOWFT_CACHE_DIR`` (default ``~/.cache/shadowft``; empty disables it),
    keyed by the file's device, inode, size, mtime and ctime: any change to the
    file changes its ctime, so a stale digest is never reused.
    """
    path = Path(path).resolve()
    stat = path.stat()
    signature = [stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]
    cache_dir = _hash_cache_dir()
    entry = None
    if cache_dir is not None:
        entry = cache_dir / "sha256" / (hashlib.sha256(str(path).encode()).hexdigest()[:32] + ".json")
        try:
            cached = json.loads(entry.read_text())
            if cached.get("signature") == signature and cached.get("path") == str(path):
                return cached["sha256"]
        except (OSError, ValueError, AttributeError):
            pass
    digest = sha256_file(path)
    if entry is not None:
        try:
            atomic_write_json(entry, {"path": str(path), "signature": signature, "sha256": digest})
        except OSError:
            pass  # an unwritable cache only costs time
    return digest


def recorded_digests(root: Path) -> dict[Path, str]:
    """sha256 of the files a shadowft download manifest in `root` verified, for those still unchanged.

    A file counts as unchanged when its size is the recorded one and its ctime
    (which every write, rename or chmod updates) is older than the manifest's
    mtime. Anything else (no manifest, a graft's manifest, a file touched
    since) is simply absent: its digest is computed.
    """
    manifest_path = Path(root) / MODEL_MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        written = manifest_path.stat().st_mtime_ns
    except (OSError, ValueError):
        return {}
    if not isinstance(manifest, dict) or manifest.get("kind") != "model" or not isinstance(manifest.get("files"), list):
        return {}
    digests = {}
    for entry in manifest["files"]:
        if not isinstance(entry, dict):
            continue
        name, digest, size = entry.get("path"), entry.get("sha256"), entry.get("size")
        if not (isinstance(name, str) and isinstance(digest, str) and isinstance(size, int)):
            continue
        path = (Path(root) / name).absolute()
        try:
            stat = path.stat()  # a linked file's own times
        except OSError:
            continue
        if stat.st_size == size and stat.st_ctime_ns < written:
            digests[path] = digest
    return digests


@dataclass(frozen=True)
class InputSet:
    """The files of one input (a model, an adapter, a delta) under its root folder."""

    root: Path
    files: tuple[Path, ...]


@dataclass(frozen=True)
class Provenance:
    """Every input of an output, by role ("instruct", "base", "tuned", "adapter", "delta")."""

    inputs: dict[str, InputSet]

    def __or__(self, other: Provenance) -> Provenance:
        return Provenance({**self.inputs, **other.inputs})

    def refuse_as_output(self, out: Path) -> None:
        """The output replaces `out` at the end: it must not be, or hold, an input."""
        target = Path(out).resolve()
        for input_set in self.inputs.values():
            root = input_set.root.resolve()
            if target == root or target in root.parents:
                raise DeltaError(f"output {out} would replace the input {input_set.root}; choose another output path")

    def start_hashing(self) -> Digests:
        return Digests(self)


class Digests:
    """SHA-256 of a provenance's files: recorded ones at once, the rest on a background thread."""

    def __init__(self, provenance: Provenance):
        self._provenance = provenance
        self._known: dict[Path, str] = {}
        for input_set in provenance.inputs.values():
            self._known.update(recorded_digests(input_set.root))
        paths = dict.fromkeys(Path(f) for s in provenance.inputs.values() for f in s.files)
        missing = [p for p in paths if p.absolute() not in self._known]
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shadowft-sha256")
        self._futures = {p: self._pool.submit(file_sha256, p) for p in missing}
        self._pool.shutdown(wait=False)

    def digest(self, path: Path) -> str:
        path = Path(path)
        known = self._known.get(path.absolute())
        if known is not None:
            return known
        return self._futures[path].result() if path in self._futures else file_sha256(path)

    def describe(self) -> dict[str, dict[str, Any]]:
        """{role: {"path", "files": {name relative to root: {"sha256", "bytes"}}}} (waits for the digests)."""
        described = {}
        for role, input_set in self._provenance.inputs.items():
            files = {}
            for path in map(Path, input_set.files):
                key = str(path.relative_to(input_set.root)) if path.is_relative_to(input_set.root) else str(path)
                files[key] = {"sha256": self.digest(path), "bytes": path.stat().st_size}
            described[role] = {"path": str(input_set.root), "files": files}
        return described

    def cancel(self) -> None:
        for future in self._futures.values():
            future.cancel()


def index_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.index.json")) if directory.is_dir() else []


def model_files(directory: Path) -> list[Path]:
    """Top-level files of a model folder other than weights: config, tokenizer, generation config, code, license."""
    return sorted(
        path
        for path in directory.iterdir()
        if path.is_file()
        and not path.name.startswith(".")
        and path.suffix not in WEIGHT_SUFFIXES
        and not path.name.endswith(".index.json")
        and path.name not in (MODEL_MANIFEST, DELTA_MANIFEST)
    )


def checkpoint_inputs(checkpoint: Any, extra: Iterable[str] = ("config.json",)) -> InputSet:
    """A checkpoint's weight files and index, plus the `extra` files beside them that exist."""
    root = checkpoint.path if checkpoint.path.is_dir() else checkpoint.path.parent
    files = [*checkpoint.files, *index_files(checkpoint.path)]
    files += [root / name for name in extra if (root / name).is_file()]
    return InputSet(root, tuple(files))


def versions() -> dict[str, str]:
    """Versions recorded in manifests."""
    from importlib.metadata import PackageNotFoundError, version

    import numba
    import numpy as np

    try:
        shadowft_version = version("shadowft")
    except PackageNotFoundError:
        shadowft_version = "unknown"
    # numba compiles the kernels that compute most blocks (shadowft.engine.kernels)
    return {
        "shadowft": shadowft_version,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
    }
