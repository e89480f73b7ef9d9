"""A benchmark spec of the workflow configuration: its keys checked, its defaults filled in, its question file read.

Standard library only: the core environment sizes jobs with `max_out_len_of` without OpenCompass.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

# Standard dataset configs set their own generation length; this is the fallback for those
# that do not, the same as OpenCompass's configs for chat models.
DEFAULT_MAX_OUT_LEN = 4096
DEFAULT_CUSTOM_MAX_OUT_LEN = 64
DEFAULT_PROMPT = "{question}"

# metric name -> (OpenCompass evaluator, the key of the score in its results)
CUSTOM_METRICS = {
    # AccEvaluator compares whole strings; str.strip on both sides makes it exact match of
    # the answer. (EMEvaluator lowercases, drops punctuation and articles, and treats a
    # plain-string reference as a list of characters.)
    "exact_match": ("opencompass.openicl.icl_evaluator.AccEvaluator", "accuracy"),
}

_KIND_KEYS = {
    "custom": ({"name", "kind", "path"}, {"metric", "max_out_len", "prompt"}),
    "opencompass": ({"name", "kind", "config"}, {"max_out_len", "variable"}),
}
# The name becomes OpenCompass's dataset abbreviation, hence a file name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_benchmark(benchmark: dict) -> dict:
    """Validate a benchmark spec and return a copy with its defaults filled in."""
    if not isinstance(benchmark, dict):
        raise TypeError(f"benchmark: expected a mapping, got {type(benchmark).__name__}")
    kind = benchmark.get("kind")
    if kind not in _KIND_KEYS:
        raise ValueError(f"benchmark.kind: {kind!r} is not one of {', '.join(_KIND_KEYS)}")
    required, optional = _KIND_KEYS[kind]
    missing = sorted(required - benchmark.keys())
    if missing:
        raise ValueError(f"benchmark ({kind}): missing key(s) {', '.join(missing)}")
    unknown = sorted(benchmark.keys() - required - optional)
    if unknown:
        raise ValueError(
            f"benchmark ({kind}): unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(sorted(required | optional))}"
        )
    name = benchmark["name"]
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"benchmark.name: {name!r} must be letters, digits, '.', '_' or '-' (it names files)")
    max_out_len = benchmark.get("max_out_len")
    if max_out_len is not None and (
        isinstance(max_out_len, bool) or not isinstance(max_out_len, int) or max_out_len < 1
    ):
        raise ValueError(f"benchmark.max_out_len: {max_out_len!r} must be a positive integer")

    spec = dict(benchmark)
    if kind == "custom":
        spec.setdefault("metric", "exact_match")
        spec["max_out_len"] = max_out_len_of(spec)
        spec.setdefault("prompt", DEFAULT_PROMPT)
        if spec["metric"] not in CUSTOM_METRICS:
            raise ValueError(f"benchmark.metric: {spec['metric']!r} is not one of {', '.join(CUSTOM_METRICS)}")
        if not isinstance(spec["prompt"], str) or "{question}" not in spec["prompt"]:
            raise ValueError(f"benchmark.prompt: {spec['prompt']!r} must be a string containing '{{question}}'")
    else:
        if not isinstance(spec["config"], str) or not _NAME.fullmatch(spec["config"]):
            raise ValueError(
                f"benchmark.config: {spec['config']!r} must name an OpenCompass dataset config, e.g. gsm8k_gen"
            )
        variable = spec.get("variable")
        if variable is not None and (not isinstance(variable, str) or not variable.isidentifier()):
            raise ValueError(f"benchmark.variable: {variable!r} must be a Python name, e.g. gsm8k_datasets")
    return spec


def max_out_len_of(benchmark: dict) -> int:
    """The most tokens generated per answer: the benchmark's own, else its kind's default (sizes jobs too)."""
    default = DEFAULT_CUSTOM_MAX_OUT_LEN if benchmark.get("kind") == "custom" else DEFAULT_MAX_OUT_LEN
    return benchmark.get("max_out_len", default)


def check_qa_file(path: Path) -> None:
    """Fail early, naming the line, on what OpenCompass would only reject mid-run."""
    if not path.is_file():
        raise ValueError(f"benchmark.path: {path} is not a file")
    count = 0
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                raise ValueError(f"{path}, line {number}: empty line")
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not JSON ({error})") from None
            if not isinstance(record, dict) or not all(
                isinstance(record.get(key), str) for key in ("question", "answer")
            ):
                raise ValueError(f'{path}, line {number}: expected {{"question": str, "answer": str}}')
            count += 1
    if count == 0:
        raise ValueError(f"benchmark.path: {path} holds no questions")
