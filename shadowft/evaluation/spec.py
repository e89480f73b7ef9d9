"""A benchmark, typed: `BenchmarkSpec`, built once from the validated config entry (or the command
line's JSON) and read by the rules, the job sizing and the OpenCompass run alike.

The keys a config's benchmark entry may hold are `CONFIG_KEYS`; the JSON Schema
(config/schema/config.schema.yaml) allows exactly these and states the same defaults, which
tests/test_config.py checks. Standard library only: the core environment sizes jobs from it
without OpenCompass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

KINDS = ("custom", "opencompass")
# The authors' model entry's max_out_len: OpenCompass gives it to every dataset whose config sets
# none of its own (a config's own wins: GSM8K, BBH, SVAMP and HumanEval keep 512, MATH 1024).
PAPER_MAX_OUT_LEN = 4096
# The most tokens generated per answer where the entry does not say: short answers for a
# question/answer set of one's own; for a standard benchmark None, the authors' rule above.
DEFAULT_MAX_OUT_LEN = {"custom": 64, "opencompass": None}
DEFAULT_METRIC = "exact_match"
DEFAULT_PROMPT = "{question}"

# metric name -> (OpenCompass evaluator, the key of the score in its results)
CUSTOM_METRICS = {
    # AccEvaluator compares whole strings; str.strip on both sides makes it exact match of
    # the answer. (EMEvaluator lowercases, drops punctuation and articles, and treats a
    # plain-string reference as a list of characters.)
    "exact_match": ("opencompass.openicl.icl_evaluator.AccEvaluator", "accuracy"),
}


def exact_match(prediction: str, gold: str) -> float:
    """One answer's exact match, as AccEvaluator scores it behind the strip postprocessors: 1 or 0."""
    return float(str(prediction).strip() == str(gold).strip())


def token_accuracy(prediction: str, gold: str) -> float:
    """The share of the gold answer's whitespace-separated tokens that the answer has at the same
    place (``e f x`` for ``c f d g``: 1 of 4): partial credit for answers of several tokens."""
    golds, answered = str(gold).split(), str(prediction).split()
    if not golds:
        return exact_match(prediction, gold)
    return sum(a == b for a, b in zip(golds, answered, strict=False)) / len(golds)


# Each custom metric's grade of one answer, 0 to 1: the evaluation records it per question and
# the score is their mean (in percent).
GRADERS = {"exact_match": exact_match}
# Secondary metrics a custom benchmark may declare (`partial_credit`), reported beside its metric,
# never in its place: each question's credit from 0 to 1, their mean the score.
PARTIAL_CREDIT = {"token_accuracy": token_accuracy}
# What a benchmark is to the paper's claim: the new task fine-tuning teaches, or the skills of
# INSTRUCT that it should keep (the report's verdict compares the variants on each).
ROLES = ("task", "retention")

# The keys of a benchmark's entry in the experiment config, per kind. `dataset` names the dataset
# whose eval.jsonl a custom benchmark asks; the plan turns it into the file's path (`path`).
# `description` and `role` are the report's alone (`REPORT_KEYS`): no evaluation reads them, so
# editing them scores nothing again.
REPORT_KEYS = ("description", "role")
CONFIG_KEYS = {
    "custom": ("kind", "dataset", "metric", "partial_credit", "prompt", "max_out_len", *REPORT_KEYS),
    "opencompass": ("kind", "config", "variable", "max_out_len", *REPORT_KEYS),
}
_REQUIRED = {"custom": ("name", "kind", "path"), "opencompass": ("name", "kind", "config")}
# The name becomes OpenCompass's dataset abbreviation, hence a file name.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class BenchmarkSpec:
    """One benchmark as a run needs it.

    ``custom``: ``path`` is a JSON-lines file of ``{"question": str, "answer": str}``; the model is
    asked ``prompt`` (with ``{question}`` filled in) as the user turn of its chat template, and its
    answer, stripped of surrounding whitespace, must equal the stripped answer (``metric``
    exact_match); ``partial_credit`` (a key of `PARTIAL_CREDIT`, or None) is scored beside it.
    ``opencompass``: a standard OpenCompass dataset config, named as a module
    (``opencompass.configs.datasets.gsm8k.gsm8k_gen``, the catalog's form) or by its file name
    (``gsm8k_gen``), and the list of dataset entries inside it (``variable``; default every
    ``*_datasets``), scored by its own evaluator; ``max_out_len`` None leaves each dataset its
    config's own length, else the paper's 4096 (`PAPER_MAX_OUT_LEN`), as the authors' runs did.
    """

    name: str
    kind: str
    max_out_len: int | None
    path: str | None = None
    metric: str | None = None
    prompt: str | None = None
    config: str | None = None
    variable: str | None = None
    partial_credit: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"benchmark.kind: {self.kind!r} is not one of {', '.join(KINDS)}")
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(f"benchmark.name: {self.name!r} must be letters, digits, '.', '_' or '-' (it names files)")
        if self.max_out_len is not None or self.kind == "custom":
            if isinstance(self.max_out_len, bool) or not isinstance(self.max_out_len, int) or self.max_out_len < 1:
                raise ValueError(f"benchmark.max_out_len: {self.max_out_len!r} must be a positive integer")
        if self.kind == "custom":
            if self.metric not in CUSTOM_METRICS:
                raise ValueError(f"benchmark.metric: {self.metric!r} is not one of {', '.join(CUSTOM_METRICS)}")
            if not isinstance(self.prompt, str) or "{question}" not in self.prompt:
                raise ValueError(f"benchmark.prompt: {self.prompt!r} must be a string containing '{{question}}'")
            if self.partial_credit is not None and self.partial_credit not in PARTIAL_CREDIT:
                raise ValueError(
                    f"benchmark.partial_credit: {self.partial_credit!r} is not one of {', '.join(PARTIAL_CREDIT)}"
                )
        else:
            if self.partial_credit is not None:
                raise ValueError("benchmark.partial_credit: only a custom benchmark declares one")
            if not isinstance(self.config, str) or not _NAME.fullmatch(self.config):
                raise ValueError(
                    f"benchmark.config: {self.config!r} must name an OpenCompass dataset config, e.g. gsm8k_gen"
                )
            if self.variable is not None and (not isinstance(self.variable, str) or not self.variable.isidentifier()):
                raise ValueError(f"benchmark.variable: {self.variable!r} must be a Python name, e.g. gsm8k_datasets")

    @classmethod
    def from_mapping(cls, benchmark: Mapping[str, Any]) -> BenchmarkSpec:
        """A spec from its JSON form (what `as_dict` writes: the command line's --benchmark-json),
        its kind's defaults filled in; unknown or missing keys are errors naming them."""
        if not isinstance(benchmark, Mapping):
            raise TypeError(f"benchmark: expected a mapping, got {type(benchmark).__name__}")
        kind = benchmark.get("kind")
        if kind not in KINDS:
            raise ValueError(f"benchmark.kind: {kind!r} is not one of {', '.join(KINDS)}")
        allowed = {"name", "path", *CONFIG_KEYS[kind]} - {"dataset", *REPORT_KEYS}
        missing = sorted(set(_REQUIRED[kind]) - benchmark.keys())
        if missing:
            raise ValueError(f"benchmark ({kind}): missing key(s) {', '.join(missing)}")
        unknown = sorted(benchmark.keys() - allowed)
        if unknown:
            raise ValueError(
                f"benchmark ({kind}): unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
            )
        defaults = {"max_out_len": DEFAULT_MAX_OUT_LEN[kind]}
        if kind == "custom":
            defaults.update(metric=DEFAULT_METRIC, prompt=DEFAULT_PROMPT)
        values = dict(benchmark)
        for key, default in defaults.items():
            if values.get(key) is None:
                values[key] = default
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form, without the keys that do not apply to its kind."""
        return {key: value for key, value in asdict(self).items() if value is not None}

    @property
    def answer_budget(self) -> int:
        """The most tokens one answer may take, for sizing a job (no catalog config sets more than 4096)."""
        return self.max_out_len or PAPER_MAX_OUT_LEN

    @property
    def score_key(self) -> str | None:
        """The key of a custom metric's score in OpenCompass's results (None: report every metric)."""
        return CUSTOM_METRICS[self.metric][1] if self.kind == "custom" else None


def benchmark_spec(name: str, entry: Mapping[str, Any], questions: str | Path | None = None) -> BenchmarkSpec:
    """The spec of the config's benchmark `name` (its validated entry, the report's keys left out); a
    custom benchmark's questions are the file `questions` (the plan's path to its dataset's eval.jsonl)."""
    values = {key: value for key, value in entry.items() if key not in ("dataset", *REPORT_KEYS)}
    if entry.get("kind") == "custom":
        values["path"] = None if questions is None else str(questions)
    return BenchmarkSpec.from_mapping({"name": name, **values})


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
