"""Bring models into the workflow, each with a manifest of what arrived.

A model comes from the Hugging Face Hub at a pinned revision (``download_model``) or
from a local folder (``link_local_model``); a dataset's data files come from the Hub at a
pinned revision (``download_dataset``), and shadowft.datasets samples and registers them.
Every destination is built in a temporary folder beside it and renamed into place only
when complete, so an interrupted download never leaves a folder a rerun would trust.
Each one holds ``shadowft_manifest.json``: the source, the resolved commit, and the size
and sha256 of every file.

Only safetensors weights are fetched by default: pickle weights (``*.bin``,
``*.pt``) can run arbitrary code when loaded. The Hub token is read from an
environment variable and never written to a manifest, a log or an error message.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import huggingface_hub
import requests
import yaml
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from shadowft.io import atomic_directory, atomic_write_json, sha256_file
from shadowft.layout import MODEL_MANIFEST, is_pickle_name

MANIFEST_NAME = MODEL_MANIFEST

# Patterns without a "/" match files at the repository root only, so copies of the
# weights in sub-folders (e.g. Llama's "original/") are not fetched twice.
DEFAULT_MODEL_PATTERNS: tuple[str, ...] = (
    "*.safetensors",
    "model.safetensors.index.json",
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "*.tiktoken",
    "chat_template.jinja",
    "chat_template.json",
    # Multimodal families (Gemma-3): LLaMA-Factory's template plugin reads the processor's
    # image tokens even for text-only data, and fails without these.
    "preprocessor_config.json",
    "processor_config.json",
)

# transformers loads exactly these names; other *.safetensors at the root (Mistral's
# "consolidated.safetensors", a second copy of the weights) are not part of the model.
SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_SINGLE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"

# select(file names, label for messages, fetch(name) -> its local path) -> the names to fetch or link.
Selector = Callable[[list[str], str, Callable[[str], Path]], list[str]]

# The files a dataset repository holds its rows in (what LLaMA-Factory and shadowft.datasets read).
DATASET_FILE_SUFFIXES = (".parquet", ".jsonl", ".json")

# huggingface_hub keeps its per-file download bookkeeping here inside local_dir.
_HF_LOCAL_DIR_STATE = ".cache"


class ModelSourceError(ValueError):
    """A repository or folder that is not a loadable safetensors model."""


class DatasetSourceError(ValueError):
    """A dataset repository without the data files the config asks for."""


class HubError(RuntimeError):
    """The Hub could not deliver a repository (not found, bad revision, network, corrupt file)."""


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
    return _download(
        repo_id,
        revision,
        Path(dest),
        repo_type="model",
        endpoint=endpoint,
        token_env=token_env,
        select=_model_selector(allow_patterns, allow_pickle),
    )


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
    select = _model_selector(allow_patterns, allow_pickle)
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
            "files": _describe_files(tmp, selected),
            "created": _now(),
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

    def select(names: list[str], label: str, fetch: Callable[[str], Path]) -> list[str]:
        if subset is not None:
            patterns = _readme_config_patterns(names, label, subset, fetch)
        else:
            patterns = list(files) if files is not None else ["*"]
        selected = [
            name
            for name in names
            if name.endswith(DATASET_FILE_SUFFIXES) and any(_glob_matches(name, p) for p in patterns)
        ]
        if not selected:
            raise DatasetSourceError(
                f"{label}: no data file ({', '.join(DATASET_FILE_SUFFIXES)}) matches {', '.join(patterns)}"
                + _listing(names)
            )
        # The README that mapped the subset to its files is kept and hashed with them.
        return ["README.md", *selected] if subset is not None else selected

    return _download(
        repo_id, revision, Path(dest), repo_type="dataset", endpoint=endpoint, token_env=token_env, select=select
    )


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


def _readme_config_patterns(names: list[str], label: str, subset: str, fetch: Callable[[str], Path]) -> list[str]:
    """The train-split data file patterns of config ``subset`` in the README's YAML front matter."""
    configs = []
    if "README.md" in names:
        text = fetch("README.md").read_text(encoding="utf-8")
        if text.startswith("---"):
            front = text.split("---", 2)[1]
            configs = (yaml.safe_load(front) or {}).get("configs") or []
    by_name = {config.get("config_name"): config for config in configs if isinstance(config, dict)}
    if subset not in by_name:
        known = ", ".join(str(name) for name in by_name) or "none"
        raise DatasetSourceError(f"{label}: the README defines no config {subset!r} (configs: {known})")
    data_files = by_name[subset].get("data_files")
    if isinstance(data_files, str):
        return [data_files]
    patterns = []
    for entry in data_files or []:
        if isinstance(entry, str):
            patterns.append(entry)
        elif isinstance(entry, dict) and entry.get("split", "train") == "train":
            path = entry.get("path")
            patterns.extend([path] if isinstance(path, str) else path or [])
    if not patterns:
        raise DatasetSourceError(f"{label}: config {subset!r} lists no train data_files")
    return patterns


def _glob_matches(name: str, pattern: str) -> bool:
    """A Hub data_files glob: each '*' stays within one path segment, as fsspec's glob does."""
    parts, pattern_parts = name.split("/"), pattern.split("/")
    if pattern == "*":
        return True
    return len(parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, wanted) for part, wanted in zip(parts, pattern_parts, strict=True)
    )


def _download(
    repo_id: str,
    revision: str,
    dest: Path,
    *,
    repo_type: str,
    endpoint: str | None,
    token_env: str,
    select: Selector,
) -> dict:
    """Fetch the files ``select(names, label, fetch)`` picks from the repo listing."""
    if not revision:
        raise ValueError(f"{repo_type} {repo_id!r}: a revision (branch, tag or commit) is required")
    token = os.environ.get(token_env) or None
    shown_endpoint = _without_credentials(endpoint or huggingface_hub.constants.ENDPOINT)
    label = f"{repo_type} {repo_id!r} at revision {revision!r} on {shown_endpoint}"
    # False, not None: huggingface_hub would otherwise fall back to a token saved by
    # `hf auth login` or to $HF_TOKEN, and the token must come from token_env only.
    auth: str | bool = token or False

    with _hub_errors(label, token, token_env), atomic_directory(dest) as tmp:
        info = HfApi(endpoint=endpoint).repo_info(
            repo_id, revision=revision, repo_type=repo_type, files_metadata=True, token=auth
        )
        commit = info.sha
        if not commit:
            # Without a commit every file would be fetched at a moving branch head.
            raise HubError(f"{label}: the Hub did not resolve the revision to a commit")
        siblings = {sibling.rfilename: sibling for sibling in info.siblings or ()}

        def fetch(name: str) -> Path:
            hf_hub_download(
                repo_id,
                name,
                repo_type=repo_type,
                revision=commit,
                local_dir=tmp,
                endpoint=endpoint,
                token=auth,
            )
            return tmp / name

        selected = select(sorted(siblings), label, fetch)
        for name in selected:
            fetch(name)
        shutil.rmtree(tmp / _HF_LOCAL_DIR_STATE, ignore_errors=True)

        files = _describe_files(tmp, selected)
        for entry in files:
            _verify(entry, siblings[entry["path"]], tmp / entry["path"], label)
        manifest = {
            "kind": repo_type,
            "source": {
                "type": "hub",
                "repo_id": repo_id,
                "repo_type": repo_type,
                "revision": revision,
                "commit": commit,
                "endpoint": shown_endpoint,
            },
            "files": files,
            "created": _now(),
            "huggingface_hub": huggingface_hub.__version__,
        }
        atomic_write_json(tmp / MANIFEST_NAME, manifest)
    return manifest


def _model_selector(allow_patterns: Sequence[str], allow_pickle: bool) -> Selector:
    """A ``select(names, label, fetch)`` for ``_download`` that accepts only loadable models."""
    pickle_weights = (PICKLE_SINGLE, "pytorch_model-*.bin", PICKLE_INDEX) if allow_pickle else ()
    patterns = (*allow_patterns, *pickle_weights)

    def select(names: list[str], label: str, fetch: Callable[[str], Path]) -> list[str]:
        return _select_model_files(
            _select_files(names, patterns),
            names,
            label=label,
            allow_pickle=allow_pickle,
            read_json=lambda name: _read_json(fetch(name)),
        )

    return select


def _select_files(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """Names matching any pattern; a pattern without '/' matches root-level names only."""
    return [
        name
        for name in names
        if any(fnmatch.fnmatchcase(name, pattern) and ("/" in pattern or "/" not in name) for pattern in patterns)
    ]


def _select_model_files(
    selected: list[str],
    available: Sequence[str],
    *,
    label: str,
    allow_pickle: bool,
    read_json: Callable[[str], dict],
) -> list[str]:
    """Check that ``selected`` is a loadable model and keep only the weight files it loads.

    ``available`` (every file of the source) only serves the error messages;
    ``read_json`` reads a weight index, fetching it first if needed.
    """
    if "config.json" not in selected:
        raise ModelSourceError(f"{label}: no config.json" + _listing(available))
    if SAFETENSORS_INDEX in selected:
        index = SAFETENSORS_INDEX
    elif SAFETENSORS_SINGLE in selected:
        return [name for name in selected if not _is_weight_file(name) or name == SAFETENSORS_SINGLE]
    elif (
        not allow_pickle
        and any(_is_pickle(name) for name in available)
        and not {SAFETENSORS_SINGLE, SAFETENSORS_INDEX} & set(available)
    ):
        raise ModelSourceError(
            f"{label}: only pickle weights ({', '.join(n for n in available if _is_pickle(n))}), "
            "no safetensors. Loading pickle files can run arbitrary code: use a safetensors "
            "revision or conversion of the model, or pass allow_pickle=True if you trust the source."
        )
    elif PICKLE_INDEX in selected:
        index = PICKLE_INDEX
    elif PICKLE_SINGLE in selected:
        return [name for name in selected if not _is_weight_file(name) or name == PICKLE_SINGLE]
    else:
        raise ModelSourceError(
            f"{label}: no weights ({SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX})" + _listing(available)
        )

    try:
        shards = set(read_json(index)["weight_map"].values())
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as error:
        raise ModelSourceError(f"{label}: {index} has no valid weight_map ({error})") from None
    missing = sorted(shards - set(available))
    if missing:
        raise ModelSourceError(f"{label}: {index} lists shards that do not exist: {', '.join(missing)}")
    return [name for name in selected if not _is_weight_file(name) or name in shards or name == index]


def _is_pickle(name: str) -> bool:
    return is_pickle_name(name)


def _is_weight_file(name: str) -> bool:
    return name.endswith((".safetensors", ".safetensors.index.json", ".bin.index.json")) or _is_pickle(name)


def _listing(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f" (files: {shown or 'none'})"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _describe_files(root: Path, names: Sequence[str]) -> list[dict]:
    return [{"path": name, "size": (root / name).stat().st_size, "sha256": sha256_file(root / name)} for name in names]


def _verify(entry: dict, sibling: huggingface_hub.hf_api.RepoSibling, path: Path, label: str) -> None:
    """Compare a downloaded file with the hashes the Hub's listing promised."""
    if sibling.lfs is not None:
        expected, actual = sibling.lfs.sha256, entry["sha256"]
    elif sibling.blob_id is not None:
        # Non-LFS files are identified by their git blob id: sha1 over a "blob <size>\0" header and the bytes.
        expected = sibling.blob_id
        actual = hashlib.sha1(b"blob %d\0" % entry["size"] + path.read_bytes()).hexdigest()
    else:
        return
    if expected != actual:
        raise HubError(f"{label}: {entry['path']} is corrupt: hash {actual}, the Hub lists {expected}")


@contextlib.contextmanager
def _hub_errors(label: str, token: str | None, token_env: str) -> Iterator[None]:
    """Turn huggingface_hub and network failures into a HubError naming the repository.

    Messages are rebuilt without the original exception chained, and with the token
    masked should a server or proxy ever echo it back.
    """

    def describe(error: BaseException) -> str:
        # huggingface_hub wraps some informative HTTP errors (a 403 on a file) in a
        # generic "check your connection" one: show the first HTTP error it chains.
        detail = error.__cause__
        while detail is not None and not isinstance(detail, HfHubHTTPError):
            detail = detail.__cause__
        text = str(error) if detail is None else f"{error} ({detail})"
        return text.replace(token, "***") if token else text

    try:
        yield
    except GatedRepoError:
        raise HubError(f"{label}: gated repository; accept its terms on the Hub and set ${token_env}") from None
    except RepositoryNotFoundError:
        hint = f"the token in ${token_env} cannot read it" if token else f"${token_env} is not set"
        raise HubError(f"{label}: repository not found (or private/gated and {hint})") from None
    except RevisionNotFoundError:
        raise HubError(f"{label}: revision not found; check the branch, tag or commit") from None
    except HfHubHTTPError as error:
        raise HubError(f"{label}: {describe(error)}") from None
    except (requests.RequestException, OSError) as error:
        raise HubError(f"{label}: download failed: {type(error).__name__}: {describe(error)}") from None


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit(parts._replace(netloc=netloc))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
