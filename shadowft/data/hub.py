"""Bring models into the workflow, each with a manifest of what arrived.

A model comes from the Hugging Face Hub at a pinned revision (``download_model``) or
from a local folder (``link_local_model``); a dataset's data files come from the Hub at a
pinned revision (``download_dataset``), and shadowft.data.datasets samples and registers them.
Every destination is built in a temporary folder beside it and renamed into place only
when complete, so an interrupted download never leaves a folder a rerun would trust.
Each one holds ``shadowft_manifest.json``: the source, the resolved commit, and the size
and sha256 of every file.

Only safetensors weights are fetched by default: pickle weights (``*.bin``,
``*.pt``) can run arbitrary code when loaded. The Hub token is read from an
environment variable and never written to a manifest, a log or an error message.

`shadowft.data.selection` says which files make a loadable model, or a dataset's data;
`shadowft.data.transfer` fetches one repository at a commit and verifies it. This module brings
models and datasets in as the workflow config describes them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from shadowft.data.selection import (
    DATASET_FILE_SUFFIXES,
    DEFAULT_MODEL_PATTERNS,
    PICKLE_INDEX,
    PICKLE_SINGLE,
    SAFETENSORS_INDEX,
    SAFETENSORS_SINGLE,
    DatasetSourceError,
    ModelSourceError,
    Selector,
    dataset_selector,
    model_selector,
)
from shadowft.data.transfer import HubError, HubRepository, describe_files, download_repository, timestamp
from shadowft.io import atomic_directory, atomic_write_json
from shadowft.engine.layout import MODEL_MANIFEST


MANIFEST_NAME = MODEL_MANIFEST


def download_model(
    repo_id: str,
    revision: str,
    dest: Path,
    *,
    endpoint: str | None = None,
    token_env: str = "HF_TOKEN",
    allow_patterns: Sequence[str] = DEFAULT_MODEL_PATTERNS,
    allow_pickle: bool = False,
) -> dict:
    """Download a model repository at ``revision`` into ``dest``; return its manifest.

    ``revision`` (branch, tag or commit) is resolved to a commit once, and every file
    is fetched at that commit, so a branch moving during the download cannot mix two
    versions. The model must have ``config.json`` and safetensors weights
    (``model.safetensors`` or ``model.safetensors.index.json`` and its shards);
    a repository with only pickle weights is refused unless ``allow_pickle``.
    """
    repo = HubRepository(repo_id, revision, "model", endpoint=endpoint, token_env=token_env)
    return download_repository(repo, Path(dest), model_selector(allow_patterns, allow_pickle))


def link_local_model(
    path: Path,
    dest: Path,
    *,
    copy: bool = False,
    allow_patterns: Sequence[str] = DEFAULT_MODEL_PATTERNS,
    allow_pickle: bool = False,
) -> dict:
    """Make the model in the local folder ``path`` available as ``dest``; return its manifest.

    The folder is checked like a Hub repository (``config.json``, safetensors
    weights, no pickle-only weights). ``dest`` gets symlinks to the selected files
    (absolute, with symlinks in ``path`` resolved), or copies with ``copy=True``:
    links keep disk use flat for multi-gigabyte weights, and the manifest's sha256
    of every file shows later whether the source changed under them.
    """
    source = Path(path).resolve()
    if not source.is_dir():
        raise ModelSourceError(f"local model {path}: not a directory")
    if source.is_relative_to(Path(dest).resolve()):
        # Replacing dest would delete the very files the new links point to.
        raise ModelSourceError(f"local model {path}: it lies inside the destination {dest}")
    names = sorted(
        file.relative_to(source).as_posix()
        for file in source.rglob("*")
        if file.is_file() and not any(part.startswith(".") for part in file.relative_to(source).parts)
    )
    select = model_selector(allow_patterns, allow_pickle)
    selected = select(names, f"local model {path}", lambda name: source / name)
    with atomic_directory(Path(dest)) as tmp:
        for name in selected:
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if copy:
                shutil.copy2(source / name, target)
            else:
                target.symlink_to((source / name).resolve())
        manifest = {
            "kind": "model",
            "source": {"type": "local", "path": str(source), "link": "copy" if copy else "symlink"},
            "files": describe_files(tmp, selected),
            "created": timestamp(),
        }
        atomic_write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def fetch_model(source: dict, dest: Path, *, endpoint: str | None = None) -> dict:
    """A model as the workflow config describes it (``source: hub`` or ``source: local``) into ``dest``.

    Models that need their own Python code also bring their ``*.py`` files, and only
    when the config says ``trust_remote_code``.
    """
    patterns = (*DEFAULT_MODEL_PATTERNS, "*.py") if source.get("trust_remote_code") else DEFAULT_MODEL_PATTERNS
    if source["source"] == "hub":
        return download_model(
            source["repo"],
            source.get("revision", "main"),
            dest,
            endpoint=endpoint,
            allow_patterns=patterns,
            allow_pickle=source.get("allow_pickle", False),
        )
    if source["source"] == "local":
        return link_local_model(Path(source["path"]), dest, allow_patterns=patterns)
    raise ModelSourceError(f"model source {source['source']!r} is not downloaded (hub and local are)")


def download_dataset(
    repo_id: str,
    revision: str,
    dest: Path,
    *,
    subset: str | None = None,
    files: Sequence[str] | None = None,
    endpoint: str | None = None,
    token_env: str = "HF_TOKEN",
) -> dict:
    """Download the data files of a dataset repository at ``revision`` into ``dest``; return its manifest.

    Which files: those of the config named ``subset`` in the repository's README (its
    ``configs`` front matter, as ``datasets.load_dataset(repo_id, subset)`` reads it; for
    BAAI/Infinity-Instruct, ``Gen`` is ``Gen/*``), or those matching the glob patterns
    ``files``, or else every data file (``*.parquet``, ``*.jsonl``, ``*.json``) of the repository.
    """
    if subset is not None and files is not None:
        raise ValueError(f"dataset {repo_id!r}: give subset or files, not both")
    repo = HubRepository(repo_id, revision, "dataset", endpoint=endpoint, token_env=token_env)
    return download_repository(repo, Path(dest), dataset_selector(subset, files))


def fetch_dataset(source: dict, dest: Path, *, endpoint: str | None = None) -> dict:
    """A dataset as the workflow config describes it (``source: hub``) into ``dest``."""
    if source["source"] != "hub":
        raise DatasetSourceError(f"dataset source {source['source']!r} is not downloaded (hub is)")
    return download_dataset(
        source["repo"],
        source["revision"],
        dest,
        subset=source.get("subset"),
        files=source.get("files"),
        endpoint=endpoint,
    )
