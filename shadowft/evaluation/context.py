"""How long a model's sequences may be, and whether a run's prompts and answers fit: decided before
OpenCompass starts.

`context_window`: max_seq_len is the paper's 16384 (the authors' TurboMind ``session_len`` and
``max_seq_len``), or the length asked for, capped by the positions the model has (config.json's
``max_position_embeddings``, a multimodal wrapper's ``text_config``). Every backend gets that one
value: transformers' ``max_seq_len``, vLLM's ``max_model_len``, TurboMind's ``session_len``.

`measure_prompts`: every prompt of the run, built by OpenCompass's own retriever, templates and
inferencer and counted as its chat wrappers count them (the chat template rendered by the
model's tokenizer, which the three backends share), against its dataset's max_out_len. A prompt
that cannot be answered in full inside max_seq_len stops the evaluation (`ContextLengthError`):
the backends would otherwise cut the prompt (transformers keeps its end, TurboMind its two ends)
or stop the answer at the window's end, and score it as if nothing had happened.

Standard library at the top; OpenCompass and transformers are imported where prompts are measured
(shadowft.evaluation.launch, in the OpenCompass process, which imports them anyway).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

# The authors' max_seq_len and TurboMind session_len (their opencompass/eval_shadow_202505.py).
PAPER_MAX_SEQ_LEN = 16384
# Where the measured fit of a run is written, in its run folder.
CONTEXT_FILE = "shadowft_context.json"


class ContextLengthError(ValueError):
    """Some prompt plus its answer does not fit max_seq_len; the message names the model's limit, the
    benchmark, the datasets and what they need."""


@dataclass(frozen=True)
class ContextWindow:
    """The max_seq_len a run gets: the one asked for (the paper's by default), capped by the model."""

    requested: int
    positions: int | None  # the model's, from its config.json (None: it states none)
    source: str  # where `positions` was read

    @property
    def max_seq_len(self) -> int:
        return self.requested if self.positions is None else min(self.requested, self.positions)

    def describe(self) -> str:
        asked = "the paper's" if self.requested == PAPER_MAX_SEQ_LEN else "the requested"
        if self.positions is None:
            return f"max_seq_len {self.max_seq_len} ({asked}; the model states no context length: {self.source})"
        if self.positions < self.requested:
            return (
                f"max_seq_len {self.max_seq_len}: {asked} {self.requested} capped by the model's "
                f"{self.positions} positions ({self.source})"
            )
        return f"max_seq_len {self.max_seq_len} ({asked}; the model has {self.positions} positions, {self.source})"


def context_window(model_dir: Path, requested: int | None = None) -> ContextWindow:
    """The window of the model in `model_dir` (a folder with config.json; anything else states no length)."""
    requested = PAPER_MAX_SEQ_LEN if requested is None else requested
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 1:
        raise ValueError(f"max_seq_len: {requested!r} must be a positive integer")
    config_file = Path(model_dir) / "config.json"
    if not config_file.is_file():
        return ContextWindow(requested, None, f"no {config_file}")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    for keys in (("max_position_embeddings",), ("text_config", "max_position_embeddings")):
        value = config
        for key in keys:
            value = value.get(key) if isinstance(value, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return ContextWindow(requested, value, f"{'.'.join(keys)} in {config_file}")
    return ContextWindow(requested, None, f"no max_position_embeddings in {config_file}")


@dataclass(frozen=True)
class DatasetFit:
    """One dataset's prompts against the window: how many, the longest (tokens), its answers' length,
    and how many prompts leave no room for a whole answer."""

    dataset: str
    prompts: int
    longest_prompt: int
    max_out_len: int
    too_long: int

    def describe(self, max_seq_len: int) -> str:
        needs = self.longest_prompt + self.max_out_len
        verdict = f"{self.too_long} of them do not fit" if self.too_long else "all fit"
        return (
            f"dataset {self.dataset}: {self.prompts} prompts, the longest {self.longest_prompt} tokens "
            f"+ max_out_len {self.max_out_len} = {needs} of max_seq_len {max_seq_len}: {verdict}"
        )


@dataclass(frozen=True)
class RunFit:
    """Every dataset of one run against its max_seq_len, as the run folder records it (CONTEXT_FILE)."""

    max_seq_len: int
    datasets: tuple[DatasetFit, ...]

    @property
    def fits(self) -> bool:
        return not any(dataset.too_long for dataset in self.datasets)

    def lines(self) -> list[str]:
        return [dataset.describe(self.max_seq_len) for dataset in self.datasets]

    def refusal(self, benchmark: str, window: ContextWindow) -> str:
        """Why the benchmark is not evaluated: the model's limit, each dataset that does not fit, what would."""
        failing = [dataset for dataset in self.datasets if dataset.too_long]
        # An entry's max_out_len is every dataset's, so it must leave room for the longest prompt of all.
        room = window.max_seq_len - max(dataset.longest_prompt for dataset in self.datasets)
        advice = (
            f"lower its max_out_len (evaluation.benchmarks.{benchmark}.max_out_len) to at most {room}, or"
            if room > 0
            else "no max_out_len fits its longest prompt:"
        )
        return (
            f"benchmark {benchmark}: its prompts and answers do not fit the model's context, "
            f"{window.describe()}; refused before OpenCompass starts (a backend would cut the prompt or the "
            "answer):\n  "
            + "\n  ".join(dataset.describe(self.max_seq_len) for dataset in failing)
            + f"\n{advice} evaluate a model with a longer context"
        )

    def write(self, path: Path) -> None:
        record = {"max_seq_len": self.max_seq_len, "datasets": [asdict(dataset) for dataset in self.datasets]}
        Path(path).write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def read(cls, path: Path) -> RunFit:
        record = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(record["max_seq_len"], tuple(DatasetFit(**dataset) for dataset in record["datasets"]))


def measure_prompts(config: dict, *, trust_remote_code: bool = False) -> RunFit:
    """Build every dataset's prompts of an OpenCompass run configuration (`run_config`'s) and count
    their tokens, as the run itself will: OpenCompass's dataset loader, retriever, templates and
    generation inferencer, and the chat wrapper's token count, on the model's tokenizer alone
    (its own code allowed only with `trust_remote_code`).

    Needs OpenCompass and transformers (the evaluation environments) and the datasets' data.
    """
    from mmengine.config import ConfigDict
    from opencompass.models.huggingface_above_v4_33 import HuggingFacewithChatTemplate
    from opencompass.openicl.icl_inferencer import GenInferencer
    from opencompass.registry import ICL_INFERENCERS, ICL_PROMPT_TEMPLATES, ICL_RETRIEVERS
    from opencompass.utils.build import build_dataset_from_cfg

    (model,) = config["models"]
    max_seq_len = model["max_seq_len"]
    counter = HuggingFacewithChatTemplate(
        path=model["path"],
        tokenizer_only=True,
        max_seq_len=max_seq_len,
        meta_template=model.get("meta_template"),
        tokenizer_kwargs={"trust_remote_code": trust_remote_code},
    )
    fits = []
    for dataset_cfg in config["datasets"]:
        dataset_cfg = ConfigDict(json.loads(json.dumps(dataset_cfg)))
        infer_cfg = dataset_cfg["infer_cfg"]
        templates = {
            key: ICL_PROMPT_TEMPLATES.build(infer_cfg[key])
            for key in ("ice_template", "prompt_template")
            if key in infer_cfg
        }
        retriever = ICL_RETRIEVERS.build({**infer_cfg["retriever"], "dataset": build_dataset_from_cfg(dataset_cfg)})
        # No window (the ICE-dropping loop stays off) and no output folder of its own: it only builds prompts.
        inferencer = ICL_INFERENCERS.build(
            {**infer_cfg["inferencer"], "model": counter, "max_seq_len": None, "output_json_filepath": "."}
        )
        if not isinstance(inferencer, GenInferencer):
            raise ValueError(
                f"dataset {dataset_cfg['abbr']}: its inferencer {type(inferencer).__name__} is not a generation "
                "inferencer, whose prompts shadowft can measure"
            )
        prompts = inferencer.get_generation_prompt_list_from_retriever_indices(
            retriever.retrieve(), retriever, inferencer.gen_field_replace_token, max_seq_len=None, **templates
        )
        lengths = [_tokens(counter.get_token_len_from_template(prompt, mode="gen")) for prompt in prompts]
        max_out_len = inferencer.max_out_len
        fits.append(
            DatasetFit(
                dataset=dataset_cfg["abbr"],
                prompts=len(lengths),
                longest_prompt=max(lengths, default=0),
                max_out_len=max_out_len,
                too_long=sum(length + max_out_len > max_seq_len for length in lengths),
            )
        )
    return RunFit(max_seq_len, tuple(fits))


def _tokens(count: int | list[int]) -> int:
    """A prompt's token count (a multi-round prompt is counted per round)."""
    return sum(count) if isinstance(count, list) else count
