"""The one description of a run and its variants: names in paths, parsing, and the sweep's expansion.

A *run* is one fine-tuning recipe applied to both models of a pair: a training stage (sft, dpo),
a tuning (lora, full), a learning rate, a LoRA rank (LoRA only) and a seed. Its name is its
folder, ``results/{pair}/{run}/``, and names every dimension, swept or not, so that adding a
value to a sweep list never renames a finished run:

    {stage}-{tuning}-lr{learning_rate}[-r{lora_rank}]-s{seed}
    sft-lora-lr1e-4-r8-s0      sft-full-lr1e-5-s0      dpo-lora-lr5e-6-r16-s2

The learning rate is written in the shortest exact scientific form (1e-4, 2.5e-5), the rank and
the seed as integers; full tuning has no rank. A *variant* is a model that is scored: ``base``
and ``instruct`` as released, and per run ``{run}/instruct_ft`` (instruct tuned directly, the
paper's baseline), ``{run}/base_ft`` (the tuned base) and ``{run}/shadow_a{alpha}`` (the graft).

The plan, the config validator and the report all name runs and variants through this module
(standard library only).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

STAGES = ("sft", "dpo")
TUNINGS = ("lora", "full")


class VariantKind(enum.Enum):
    """What a scored model is; the value is its name in ``evaluation.variants``."""

    BASE = "base"
    INSTRUCT = "instruct"
    INSTRUCT_FT = "instruct_ft"
    BASE_FT = "base_ft"
    SHADOW = "shadow"

    @property
    def per_run(self) -> bool:
        return self not in (VariantKind.BASE, VariantKind.INSTRUCT)


def alpha_label(alpha: float) -> str:
    """The graft strength as it appears in paths, exact and short: 1.0 -> '1', 0.5 -> '0.5'."""
    return format(Decimal(repr(float(alpha))).normalize(), "f")


def learning_rate_label(learning_rate: float) -> str:
    """The learning rate as it appears in run names, exact and short: 1e-4, 2.5e-5, 1e-2."""
    text = format(Decimal(repr(float(learning_rate))).normalize(), "e")
    mantissa, exponent = text.split("e")
    return f"{mantissa}e{int(exponent)}"


_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_RUN = re.compile(
    rf"(?P<stage>{'|'.join(STAGES)})-(?P<tuning>{'|'.join(TUNINGS)})"
    rf"-lr(?P<learning_rate>{_NUMBER}e-?[0-9]+)(?:-r(?P<lora_rank>[0-9]+))?-s(?P<seed>[0-9]+)"
)
_VARIANT = re.compile(r"(?P<run>[^/]+)/(?:(?P<tuned>instruct_ft|base_ft)|shadow_a(?P<alpha>[0-9]+(?:\.[0-9]+)?))")


@dataclass(frozen=True)
class Run:
    """One fine-tuning recipe, applied to base (the update to graft) and to instruct (the baseline)."""

    stage: str
    tuning: str
    learning_rate: float
    lora_rank: int | None
    seed: int

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"run: stage must be one of {', '.join(STAGES)}, got {self.stage!r}")
        if self.tuning not in TUNINGS:
            raise ValueError(f"run: tuning must be one of {', '.join(TUNINGS)}, got {self.tuning!r}")
        if (self.tuning == "lora") != (self.lora_rank is not None):
            raise ValueError(
                f"run: a LoRA run has a rank and a full run none (tuning {self.tuning}, rank {self.lora_rank})"
            )
        if self.lora_rank is not None and (isinstance(self.lora_rank, bool) or self.lora_rank < 1):
            raise ValueError(f"run: lora_rank must be a whole number >= 1, got {self.lora_rank!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"run: seed must be a whole number >= 0, got {self.seed!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"run: learning_rate must be > 0, got {self.learning_rate!r}")

    @property
    def name(self) -> str:
        rank = f"-r{self.lora_rank}" if self.lora_rank is not None else ""
        return f"{self.stage}-{self.tuning}-lr{learning_rate_label(self.learning_rate)}{rank}-s{self.seed}"

    @classmethod
    def parse(cls, name: str) -> Run:
        match = _RUN.fullmatch(name)
        if match is None:
            raise ValueError(
                f"unknown run {name!r}; expected {{stage}}-{{tuning}}-lr{{learning_rate}}[-r{{lora_rank}}]-s{{seed}}, "
                "e.g. sft-lora-lr1e-4-r8-s0 or sft-full-lr1e-5-s0"
            )
        rank = match["lora_rank"]
        run = cls(
            match["stage"],
            match["tuning"],
            float(match["learning_rate"]),
            None if rank is None else int(rank),
            int(match["seed"]),
        )
        if run.name != name:
            raise ValueError(f"run {name!r} is not written canonically (its canonical name is {run.name!r})")
        return run


@dataclass(frozen=True)
class Variant:
    """A scored model of a pair: base or instruct as released, or one model of a run."""

    kind: VariantKind
    run: Run | None = None
    alpha: float | None = None

    def __post_init__(self) -> None:
        if self.kind.per_run != (self.run is not None):
            raise ValueError(f"variant {self.kind.value}: {'needs' if self.kind.per_run else 'takes no'} run")
        if (self.kind is VariantKind.SHADOW) != (self.alpha is not None):
            raise ValueError(f"variant {self.kind.value}: only a shadow (graft) has an alpha")

    @property
    def name(self) -> str:
        """The variant's folder under results/{pair}/eval/."""
        if self.run is None:
            return self.kind.value
        if self.kind is VariantKind.SHADOW:
            return f"{self.run.name}/{shadow_folder(self.alpha)}"
        return f"{self.run.name}/{self.kind.value}"

    @classmethod
    def parse(cls, name: str) -> Variant:
        if name in (VariantKind.BASE.value, VariantKind.INSTRUCT.value):
            return cls(VariantKind(name))
        match = _VARIANT.fullmatch(name)
        if match is None:
            raise ValueError(
                f"unknown variant {name!r}; expected base, instruct, "
                "{run}/instruct_ft, {run}/base_ft or {run}/shadow_a{alpha}"
            )
        run = Run.parse(match["run"])
        if match["tuned"]:
            return cls(VariantKind(match["tuned"]), run)
        variant = cls(VariantKind.SHADOW, run, float(match["alpha"]))
        if variant.name != name:
            raise ValueError(f"variant {name!r} is not written canonically (its canonical name is {variant.name!r})")
        return variant

    @property
    def scored_role(self) -> str:
        """The role of the pair whose model an evaluation of this variant loads: base for base and
        base_ft, else instruct (a graft is instruct's model)."""
        return "base" if self.kind in (VariantKind.BASE, VariantKind.BASE_FT) else "instruct"

    @property
    def roles_run(self) -> tuple[str, ...]:
        """The roles whose models the jobs behind this variant ran: the scored one, and for a
        graft also base, whose tuning made the update."""
        return ("base", "instruct") if self.kind is VariantKind.SHADOW else (self.scored_role,)

    def dimensions(self) -> dict[str, Any]:
        """The sweep's dimensions of this variant, None where one does not apply (base, instruct)."""
        fields = ("stage", "tuning", "learning_rate", "lora_rank", "seed")
        run = {field: None if self.run is None else getattr(self.run, field) for field in fields}
        return {**run, "alpha": self.alpha}


def shadow_folder(alpha: float) -> str:
    """The graft's folder name inside its run's folder: shadow_a{alpha}."""
    return f"shadow_a{alpha_label(alpha)}"


def run_seeds(config: dict) -> list[int]:
    """The seeds the runs sweep: training.seeds, or the top-level seed alone when that list is empty."""
    return list(config["training"]["seeds"]) or [config["seed"]]


def runs(config: dict) -> list[Run]:
    """Every run a (validated) config sweeps, in the config's order: stages, tunings, rates, ranks, seeds."""
    training = config["training"]
    expanded = []
    for stage in training["stages"]:
        for tuning in training["tunings"]:
            ranks = training["lora_ranks"] if tuning == "lora" else [None]
            for learning_rate in training["learning_rates"][tuning]:
                for rank in ranks:
                    for seed in run_seeds(config):
                        expanded.append(Run(stage, tuning, float(learning_rate), rank, seed))
    return expanded


def variants(config: dict) -> list[Variant]:
    """The evaluated variants of every pair, in report order: base, instruct, then per run."""
    wanted = {VariantKind(name) for name in config["evaluation"]["variants"]}
    found = [Variant(kind) for kind in (VariantKind.BASE, VariantKind.INSTRUCT) if kind in wanted]
    for run in runs(config):
        found += [Variant(kind, run) for kind in (VariantKind.INSTRUCT_FT, VariantKind.BASE_FT) if kind in wanted]
        if VariantKind.SHADOW in wanted:
            found += [Variant(VariantKind.SHADOW, run, float(alpha)) for alpha in config["graft"]["alphas"]]
    return found
