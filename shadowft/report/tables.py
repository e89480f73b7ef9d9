"""The paper's tables, computed from the tidy frame: per pair and sweep setting (``Setting``:
stage, tuning, learning rate, LoRA rank) one ``ScoreTable``, variants as rows, benchmarks, group
averages and the average as columns. Runs that differ only by seed are one row, each cell the
mean and standard deviation over the seeds (``Cell``).

The numbers follow one rule, the evaluation's `Scoring` (shadowft.evaluation.benchmarks): a
benchmark's score is its `Headline` over its datasets' scores (for the paper's benchmarks, as the
Shadow-FT authors' summarizer takes it), a group's the unweighted mean of its benchmarks', and
the Average the unweighted mean of the averaged groups' means (the authors' overall average),
or of every benchmark's score where no group is averaged.

``shadowft.report.figures`` draws the same tables; ``shadowft.report.document`` writes them as text.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from shadowft.evaluation.benchmarks import Headline, Scoring
from shadowft.report.records import KINDS, UNTUNED, missing_to_none, setting_values
from shadowft.workflow.sweep import Variant

AVERAGE = "Average"
REFERENCE = "instruct"  # every Shadow-FT claim is made against it
BASELINE = "instruct_ft"  # instruct tuned directly: the paper's baseline
TUNING_LABELS = {"lora": "LoRA", "full": "Full"}


@dataclass(frozen=True)
class Setting:
    """A table's sweep setting: everything that makes a run except its seed and the graft's alpha."""

    stage: str | None = None
    tuning: str | None = None
    learning_rate: float | None = None
    lora_rank: int | None = None

    @property
    def tuning_label(self) -> str:
        label = TUNING_LABELS.get(self.tuning or "", self.tuning or "")
        return label if self.stage in (None, "sft") else f"{label}-{self.stage.upper()}"

    @property
    def title(self) -> str:
        parts = [(self.stage or "").upper(), TUNING_LABELS.get(self.tuning or "", self.tuning or "")]
        if self.lora_rank is not None:
            parts.append(f"rank {self.lora_rank}")
        if self.learning_rate is not None:
            parts.append(f"lr {self.learning_rate:g}")
        return ", ".join(part for part in parts if part)


@dataclass(frozen=True)
class Cell:
    """A score over the seeds that ran: their mean, standard deviation (None for one seed) and count."""

    mean: float
    sd: float | None = None
    n: int = 1

    @classmethod
    def of(cls, values: Sequence[float]) -> Cell:
        if not values or any(math.isnan(value) for value in values):
            return cls(math.nan, None, len(values))
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass(frozen=True)
class Row:
    """One variant's line of a table: kind, alpha (grafts), label, a cell per column, the seeds
    it averages and whether any of its runs' models ran their own code."""

    kind: str
    alpha: float | None
    label: str
    cells: dict[str, Cell]
    seeds: tuple[int, ...] = ()
    trust_remote_code: bool = False


@dataclass(frozen=True)
class Columns:
    """A table's columns and what each number is: the benchmarks (each with its rule in words), the
    group averages (each with its benchmarks), and what the Average averages."""

    benchmarks: dict[str, str]  # benchmark -> how its score is taken from its datasets
    groups: dict[str, list[str]]  # "{group} avg" -> its benchmarks
    averaged: list[str]  # the columns the Average is the unweighted mean of
    by_groups: bool  # whether those are group averages (the authors' rule) rather than every benchmark

    @property
    def names(self) -> list[str]:
        return [*self.benchmarks, *self.groups, AVERAGE]


@dataclass(frozen=True)
class ScoreTable:
    """The paper's table for one pair and sweep setting (None: a pair with untuned variants only)."""

    pair: str
    setting: Setting | None
    columns: list[str]  # benchmarks, then group averages, then the average
    benchmark_columns: list[str]
    rows: list[Row] = field(default_factory=list)
    rules: Columns | None = None  # what each column's number is, for the caption

    def row(self, kind: str, alpha: float | None = None) -> Row | None:
        return next((row for row in self.rows if row.kind == kind and row.alpha == alpha), None)

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(sorted({seed for row in self.rows for seed in row.seeds}))

    @property
    def baseline_label(self) -> str:
        return f"Instruct + {self.setting.tuning_label}" if self.setting else "Instruct tuned directly"


@dataclass(frozen=True)
class PairSection:
    """What the report says about one pair: its tables, sigma, the learning rates it ran, and a
    sentence per run on how its updates overlap (shadowft.report.overlap)."""

    pair: str
    tables: list[ScoreTable]
    sigma: float | None
    learning_rates: dict[str, list[float]]  # per tuning label
    overlaps: tuple[str, ...] = ()

    @property
    def learning_rate_swept(self) -> bool:
        return learning_rate_swept(self.tables)


@dataclass(frozen=True)
class _VariantScores:
    """One variant of a pair as the tables need it: a score per column, and what groups it into a row."""

    kind: str
    setting: Setting | None
    seed: int | None
    alpha: float | None
    trust_remote_code: bool
    scores: dict[str, float]


def variant_label(kind: str, setting: Setting | None = None, alpha: float | None = None) -> str:
    """How a variant reads in a table: Base, Instruct, Base + LoRA, Instruct + Full, Shadow-LoRA (α=0.5)."""
    if kind in UNTUNED:
        return kind.capitalize()
    tuning = setting.tuning_label if setting else ""
    if kind == "shadow":
        return f"Shadow-{tuning} (α={alpha:g})"
    return f"{kind.removesuffix('_ft').capitalize()} + {tuning}"


def variant_name_label(variant: str) -> str:
    """A variant's label from its name alone (``sft-lora-lr1e-2-r8-s0/shadow_a1`` -> ``Shadow-LoRA (α=1)``),
    for tables that carry no sweep values; the run's seed is not part of it."""
    parsed = Variant.parse(variant)
    run = parsed.run
    setting = None if run is None else Setting(run.stage, run.tuning, run.learning_rate, run.lora_rank)
    return variant_label(parsed.kind.value, setting, parsed.alpha)


def pair_tables(summary: pd.DataFrame, pair: str, scoring: Scoring | None = None) -> list[ScoreTable]:
    """The pair's tables: one per sweep setting, Base and Instruct in each; seeds averaged per row.

    `scoring` (default: every benchmark by its first metric, no groups) makes the numbers.
    """
    scoring = scoring or Scoring()
    rows = summary[summary["pair"] == pair]
    if rows.empty:
        raise ValueError(f"no scores for pair {pair!r}")
    rules = _columns(rows, pair, scoring)
    benchmark_columns, columns = list(rules.benchmarks), rules.names
    variants = _variant_scores(rows, rules, scoring)
    settings = list(dict.fromkeys(v.setting for v in variants if v.kind not in UNTUNED))
    tables = []
    for setting in settings or [None]:
        members = [v for v in variants if v.kind in UNTUNED or v.setting == setting]
        keys = sorted({(v.kind, v.alpha) for v in members}, key=lambda k: (KINDS.index(k[0]), k[1] or 0.0))
        table_rows = []
        for kind, alpha in keys:
            same = [v for v in members if (v.kind, v.alpha) == (kind, alpha)]
            table_rows.append(
                Row(
                    kind,
                    alpha,
                    variant_label(kind, setting, alpha),
                    {column: Cell.of([v.scores[column] for v in same]) for column in columns},
                    tuple(sorted(v.seed for v in same if v.seed is not None)),
                    any(v.trust_remote_code for v in same),
                )
            )
        tables.append(ScoreTable(pair, setting, columns, benchmark_columns, table_rows, rules))
    return tables


def learning_rate_swept(tables: Sequence[ScoreTable]) -> bool:
    """Whether some setting of these tables ran at more than one learning rate (else there is no curve to draw)."""
    return _sweeps_learning_rate(table.setting for table in tables if table.setting is not None)


def _sweeps_learning_rate(settings: Iterable[Setting]) -> bool:
    rates: dict[tuple, set[float]] = {}
    for setting in settings:
        if setting.learning_rate is not None:
            key = (setting.stage, setting.tuning, setting.lora_rank)
            rates.setdefault(key, set()).add(setting.learning_rate)
    return any(len(values) > 1 for values in rates.values())


def report_sections(
    summary: pd.DataFrame,
    scoring: Scoring,
    sigmas: Mapping[str, float],
    overlaps: Mapping[str, Sequence[str]] | None = None,
) -> list[PairSection]:
    """Per pair, in order of first appearance: its tables, its sigma, the learning rates it ran and
    its `overlaps` sentences."""
    sections = []
    for pair in dict.fromkeys(summary["pair"]):
        tables = pair_tables(summary, pair, scoring)
        rates: dict[str, list[float]] = {}
        for table in tables:
            if table.setting is not None and table.setting.learning_rate is not None:
                rates.setdefault(table.setting.tuning_label, []).append(table.setting.learning_rate)
        rates = {label: sorted(set(values)) for label, values in rates.items()}
        sections.append(PairSection(pair, tables, sigmas.get(pair), rates, tuple((overlaps or {}).get(pair, ()))))
    return sections


def overall_sigma(similarity_csv: Path) -> float:
    """The overall sigma of a similarity CSV written by shadowft.engine.sigma."""
    table = read_similarity(similarity_csv)
    overall = table.loc[table["level"] == "overall", "sigma"]
    if len(overall) != 1:
        raise ValueError(f"{similarity_csv}: expected one row with level 'overall', found {len(overall)}")
    return float(overall.iloc[0])


def read_similarity(similarity_csv: Path) -> pd.DataFrame:
    """A similarity CSV (shadowft.engine.sigma.COLUMNS), checked for the columns the report reads."""
    if not Path(similarity_csv).is_file():
        raise FileNotFoundError(f"similarity table {similarity_csv} does not exist")
    table = pd.read_csv(similarity_csv, keep_default_na=False, na_values={"layer": [""], "sigma": [""]})
    missing = [column for column in ("level", "name", "layer", "sigma") if column not in table.columns]
    if missing:
        raise ValueError(f"{similarity_csv} lacks column(s) {', '.join(missing)}")
    return table


def _setting_of(row) -> Setting | None:
    values = setting_values(row)
    return None if values is None else Setting(*values)


def _columns(rows: pd.DataFrame, pair: str, scoring: Scoring) -> Columns:
    """The pair's columns: a benchmark each (grouped benchmarks first, in group order), a "{group} avg"
    per group, and the Average over the averaged groups (or over every benchmark)."""
    benchmarks = list(dict.fromkeys(rows["benchmark"]))
    grouped = [b for members in scoring.groups.values() for b in members if b in benchmarks]
    benchmarks = list(dict.fromkeys([*grouped, *benchmarks]))
    groups = {}
    for group, members in scoring.groups.items():
        absent = [b for b in members if b not in benchmarks]
        if absent:
            raise ValueError(f"benchmark group {group!r}: pair {pair!r} has no scores for {', '.join(absent)}")
        groups[f"{group} avg"] = list(members)
    averaged = [f"{group} avg" for group in scoring.averaged]
    rules = {
        benchmark: _rule_in_words(scoring.headline(benchmark), rows[rows["benchmark"] == benchmark])
        for benchmark in benchmarks
    }
    return Columns(rules, groups, averaged or benchmarks, bool(averaged))


def _rule_in_words(headline: Headline, rows: pd.DataFrame) -> str:
    """How a benchmark's score is taken from its datasets, in a few words ("accuracy, mean over its 57 datasets")."""
    datasets = list(dict.fromkeys(rows["dataset"]))
    kept = list(headline.datasets) or datasets
    metric = headline.metric or " or ".join(dict.fromkeys(rows.drop_duplicates("dataset")["metric"]))
    if len(kept) > 1:
        return f"{metric}, mean over {'its ' if kept == datasets else ''}{len(kept)} datasets"
    if len(datasets) > 1:
        return f"{metric} of {kept[0]} (1 of its {len(datasets)} datasets)"
    return metric


def _variant_scores(rows: pd.DataFrame, rules: Columns, scoring: Scoring) -> list[_VariantScores]:
    """One entry per variant of the pair: kind, setting, seed, alpha and a score per column."""
    variants = []
    for _, scores in rows.groupby("variant", sort=False):
        first = next(scores.itertuples())
        per_column = {}
        for benchmark in rules.benchmarks:
            mine = scores[scores["benchmark"] == benchmark]
            values = {(row.dataset, row.metric): float(row.score) for row in mine.itertuples()}
            per_column[benchmark] = scoring.headline(benchmark).score(benchmark, values) if values else math.nan
        for column, members in rules.groups.items():
            per_column[column] = statistics.fmean(per_column[b] for b in members)
        per_column[AVERAGE] = statistics.fmean(per_column[c] for c in rules.averaged)
        variants.append(
            _VariantScores(
                kind=first.kind,
                setting=_setting_of(first),
                seed=None if first.kind in UNTUNED else missing_to_none(first.seed),
                alpha=missing_to_none(first.alpha),
                trust_remote_code=bool(scores["trust_remote_code"].any()),
                scores=per_column,
            )
        )
    return variants
