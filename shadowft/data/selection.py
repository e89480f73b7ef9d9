"""Which files of a repository or folder to fetch: a loadable model's, or a dataset's data files.

A `Selector` gets every file name of the source, a label for its messages, and a `fetch`
that brings one file (a weight index, a README) to read before choosing. Only safetensors
weights are chosen by default: pickle weights (``*.bin``, ``*.pt``) can run arbitrary code
when loaded. Standard library and yaml only.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from shadowft.data.rows import DATA_SUFFIXES
from shadowft.engine.layout import is_pickle_name

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

# The files a dataset repository holds its rows in: those shadowft.data.datasets reads.
DATASET_FILE_SUFFIXES = DATA_SUFFIXES


class ModelSourceError(ValueError):
    """A repository or folder that is not a loadable safetensors model."""


class DatasetSourceError(ValueError):
    """A dataset repository without the data files the config asks for."""


def model_selector(allow_patterns: Sequence[str], allow_pickle: bool) -> Selector:
    """A `Selector` that accepts only loadable models: the files matching `allow_patterns`, the weights they load."""
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


def dataset_selector(subset: str | None, files: Sequence[str] | None) -> Selector:
    """A `Selector` of a dataset's data files: those of the README's config `subset`, those matching
    the globs `files`, or else every data file."""

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
                + listing(names)
            )
        # The README that mapped the subset to its files is kept and hashed with them.
        return ["README.md", *selected] if subset is not None else selected

    return select


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
        raise ModelSourceError(f"{label}: no config.json" + listing(available))
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
            f"{label}: no weights ({SAFETENSORS_SINGLE} or {SAFETENSORS_INDEX})" + listing(available)
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


def listing(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f" (files: {shown or 'none'})"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
