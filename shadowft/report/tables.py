"""The paper's tables, computed from the tidy frame: per pair and sweep setting (``Setting``:
stage, tuning, learning rate, LoRA rank) one ``ScoreTable``, variants as rows, benchmarks (each
followed by its partial-credit metric, where it declares one), group averages and the average as
columns. Runs that differ only by seed are one row, each cell the mean and standard deviation over
the seeds and each seed's value (``Cell``); a cell of one run carries its questions and 95% interval
(``shadowft.report.evidence.Estimate``). Every row is compared with Instruct and, for the graft and
the tuned base, with Instruct tuned directly in the same setting, seed by seed and on the same
questions (``Comparison``).

The numbers follow one rule, the evaluation's `Scoring` (shadowft.evaluation.benchmarks): a
benchmark's score is its `Headline` over its datasets' scores (for the paper's benchmarks, as the
Shadow-FT authors' summarizer takes it), a group's the unweighted mean of its benchmarks', and
the Average the unweighted mean of the averaged groups' means (the authors' overall average),
or of every benchmark's score where no group is averaged (and none where benchmarks declare
different roles). Intervals and paired tests use each question's value where predictions.json
holds it (``shadowft.report.answers``).

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
from shadowft.report.answers import Outcomes
from shadowft.report.evidence import (
    Difference,
    Estimate,
    Measured,
    Paired,
    Part,
    combine,
    combine_differences,
    compare,
    measure,
)
from shadowft.report.records import KINDS, UNTUNED, missing_to_none, setting_values
from shadowft.workflow.sweep import Variant

AVERAGE = "Average"
REFERENCE = "instruct"  # every Shadow-FT claim is made against it
BASELINE = "instruct_ft"  # instruct tuned directly: the paper's baseline
# The rows compared with the baseline besides Instruct: what the graft is, and what it carries.
AGAINST_BASELINE = ("base_ft", "shadow")
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
    """A column's number over the seeds that ran it: their mean, standard deviation (None for one
    seed), count and each seed's value; for one run its estimate (questions, 95% interval)."""

    mean: float
    sd: float | None = None
    n: int = 1
    values: tuple[float, ...] = ()
    estimate: Estimate | None = None

    @classmethod
    def of(cls, estimates: Sequence[Estimate]) -> Cell:
        values = tuple(estimate.value for estimate in estimates)
        one = estimates[0] if len(estimates) == 1 else None
        if not values or any(math.isnan(value) for value in values):
            return cls(math.nan, None, len(values), values, one)
        sd = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), sd, len(values), values, one)


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
class RunDifference:
    """One run minus another on the same questions: the seed (None: an untuned row), both variants'
    names (shadowft.workflow.sweep) and the difference."""

    seed: int | None
    variant: str
    against: str
    difference: Difference


@dataclass(frozen=True)
class Comparison:
    """One row of a table against a reference row (`against`: Instruct, or Instruct tuned directly)
    in one column: each seed's difference on the same questions."""

    kind: str
    alpha: float | None
    against: str
    column: str
    differences: tuple[RunDifference, ...]

    @property
    def mean(self) -> float:
        return statistics.fmean(run.difference.value for run in self.differences)


@dataclass(frozen=True)
class Columns:
    """A table's columns and what each number is: the benchmarks (each with its rule in words), the
    partial-credit columns (each with its benchmark and metric), the group averages (each with its
    benchmarks), and what the Average averages (empty: no Average column)."""

    benchmarks: dict[str, str]  # benchmark -> how its score is taken from its datasets
    groups: dict[str, list[str]]  # "{group} avg" -> its benchmarks
    averaged: list[str]  # the columns the Average is the unweighted mean of
    by_groups: bool  # whether those are group averages (the authors' rule) rather than every benchmark
    credit: dict[str, tuple[str, str]] = field(default_factory=dict)  # column -> (benchmark, metric)

    @property
    def names(self) -> list[str]:
        columns = []
        for benchmark in self.benchmarks:
            columns.append(benchmark)
            columns += [column for column, (of, _) in self.credit.items() if of == benchmark]
        return [*columns, *self.groups, *([AVERAGE] if self.averaged else [])]

    def weights(self, column: str) -> dict[str, float]:
        """The benchmarks a group's mean or the Average is made of, each with its weight."""
        if column in self.groups:
            members = self.groups[column]
            return {benchmark: 1 / len(members) for benchmark in members}
        if column != AVERAGE:
            raise KeyError(f"{column} is no mean of benchmarks")
        weights: dict[str, float] = {}
        for averaged in self.averaged:
            for benchmark, weight in (self.weights(averaged) if self.by_groups else {averaged: 1.0}).items():
                weights[benchmark] = weights.get(benchmark, 0.0) + weight / len(self.averaged)
        return weights


def credit_column(benchmark: str, metric: str) -> str:
    """The column of a benchmark's partial-credit metric: ``demo_task (token_accuracy)``."""
    return f"{benchmark} ({metric})"


@dataclass(frozen=True)
class ScoreTable:
    """The paper's table for one pair and sweep setting (None: a pair with untuned variants only)."""

    pair: str
    setting: Setting | None
    columns: list[str]  # benchmarks (each with its partial credit), then group averages, then the average
    benchmark_columns: list[str]
    rows: list[Row] = field(default_factory=list)
    rules: Columns | None = None  # what each column's number is, for the caption
    comparisons: list[Comparison] = field(default_factory=list)

    def row(self, kind: str, alpha: float | None = None) -> Row | None:
        return next((row for row in self.rows if row.kind == kind and row.alpha == alpha), None)

    def comparison(self, row: Row, against: str, column: str) -> Comparison | None:
        """How `row` differs from the row of kind `against` in `column` (None: not compared)."""
        key = (row.kind, row.alpha, against, column)
        return next((c for c in self.comparisons if (c.kind, c.alpha, c.against, c.column) == key), None)

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
    """One variant of a pair as the tables need it: a number per column with what pairs and combines
    it, and what groups it into a row."""

    name: str
    kind: str
    setting: Setting | None
    seed: int | None
    alpha: float | None
    trust_remote_code: bool
    columns: dict[str, Measured]


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


def pair_tables(
    summary: pd.DataFrame, pair: str, scoring: Scoring | None = None, outcomes: Outcomes | None = None
) -> list[ScoreTable]:
    """The pair's tables: one per sweep setting, Base and Instruct in each; seeds averaged per row.

    `scoring` (default: every benchmark by its first metric, no groups) makes the numbers;
    `outcomes` (shadowft.report.answers.read_outcomes) are the questions' values that intervals
    and paired differences resample where a score alone cannot say them.
    """
    scoring = scoring or Scoring()
    rows = summary[summary["pair"] == pair]
    if rows.empty:
        raise ValueError(f"no scores for pair {pair!r}")
    rules = _columns(rows, pair, scoring)
    benchmark_columns, columns = list(rules.benchmarks), rules.names
    variants = _variant_scores(pair, rows, rules, scoring, outcomes or {})
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
                    {column: Cell.of([v.columns[column].estimate for v in same]) for column in columns},
                    tuple(sorted(v.seed for v in same if v.seed is not None)),
                    any(v.trust_remote_code for v in same),
                )
            )
        comparisons = _comparisons(pair, members, rules)
        tables.append(ScoreTable(pair, setting, columns, benchmark_columns, table_rows, rules, comparisons))
    return tables


def _comparisons(pair: str, members: Sequence[_VariantScores], rules: Columns) -> list[Comparison]:
    """Every row against Instruct and, for the graft and the tuned base, against Instruct tuned
    directly, seed by seed (each run against the baseline of its own seed)."""
    reference = next((v for v in members if v.kind == REFERENCE), None)
    baselines = {v.seed: v for v in members if v.kind == BASELINE}
    pairs: dict[tuple, list[tuple[int | None, _VariantScores, _VariantScores]]] = {}
    for variant in members:
        if reference is not None and variant.kind != REFERENCE:
            pairs.setdefault((variant.kind, variant.alpha, REFERENCE), []).append((variant.seed, variant, reference))
        if variant.kind in AGAINST_BASELINE and variant.seed in baselines:
            against = baselines[variant.seed]
            pairs.setdefault((variant.kind, variant.alpha, BASELINE), []).append((variant.seed, variant, against))
    comparisons = []
    for (kind, alpha, against), runs in pairs.items():
        paired = [(seed, first, second, _paired_columns(pair, first, second, rules)) for seed, first, second in runs]
        for column in rules.names:
            differences = tuple(
                RunDifference(seed, first.name, second.name, columns[column].difference)
                for seed, first, second, columns in paired
            )
            comparisons.append(Comparison(kind, alpha, against, column, differences))
    return comparisons


def _paired_columns(pair: str, first: _VariantScores, second: _VariantScores, rules: Columns) -> dict[str, Paired]:
    """`first` minus `second` in every column, the benchmarks paired on their questions."""
    paired = {
        column: compare((pair, first.name, second.name, column), first.columns[column], second.columns[column])
        for column in [*rules.benchmarks, *rules.credit]
    }
    for column in [*rules.groups, *([AVERAGE] if rules.averaged else [])]:
        paired[column] = combine_differences(paired, rules.weights(column))
    return paired


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
    outcomes: Outcomes | None = None,
    overlaps: Mapping[str, Sequence[str]] | None = None,
) -> list[PairSection]:
    """Per pair, in order of first appearance: its tables, its sigma, the learning rates it ran and
    its `overlaps` sentences."""
    sections = []
    for pair in dict.fromkeys(summary["pair"]):
        tables = pair_tables(summary, pair, scoring, outcomes)
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
    """The pair's columns: a benchmark each (grouped benchmarks first, in group order) with its
    partial-credit metric beside it, a "{group} avg" per group, and the Average over the averaged
    groups (or over every benchmark; none where `scoring` says there is none)."""
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
    credit = {
        credit_column(benchmark, metric): (benchmark, metric)
        for benchmark, metric in scoring.partial_credit.items()
        if benchmark in benchmarks and (rows.loc[rows["benchmark"] == benchmark, "metric"] == metric).any()
    }
    if not averaged and scoring.has_average:
        averaged = benchmarks
    return Columns(rules, groups, averaged, bool(scoring.averaged), credit)


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


def _variant_scores(
    pair: str, rows: pd.DataFrame, rules: Columns, scoring: Scoring, outcomes: Outcomes
) -> list[_VariantScores]:
    """One entry per variant of the pair: kind, setting, seed, alpha and a measured number per column."""
    variants = []
    for name, scores in rows.groupby("variant", sort=False):
        first = next(scores.itertuples())
        per_column: dict[str, Measured] = {}
        for benchmark in rules.benchmarks:
            found = {(row.dataset, row.metric): row for row in scores[scores["benchmark"] == benchmark].itertuples()}
            if not found:
                per_column[benchmark] = Measured(Estimate(math.nan, None))
                continue
            headline = scoring.headline(benchmark)
            keys = [(pair, name, benchmark, *key) for key in headline.kept(benchmark, found)]
            parts = [_part(found[key[3:]], outcomes.get(key)) for key in keys]
            per_column[benchmark] = measure(_seed_key(keys, benchmark), parts, headline.proportion)
        for column, (benchmark, metric) in rules.credit.items():
            mine = scores[(scores["benchmark"] == benchmark) & (scores["metric"] == metric)]
            keys = [(pair, name, benchmark, row.dataset, metric) for row in mine.itertuples()]
            parts = [_part(row, outcomes.get(key)) for row, key in zip(mine.itertuples(), keys, strict=True)]
            per_column[column] = measure(_seed_key(keys, column), parts, proportion=False)
        for column in rules.groups:
            per_column[column] = combine(per_column, rules.weights(column))
        if rules.averaged:
            per_column[AVERAGE] = combine(per_column, rules.weights(AVERAGE))
        variants.append(
            _VariantScores(
                name=name,
                kind=first.kind,
                setting=_setting_of(first),
                seed=None if first.kind in UNTUNED else missing_to_none(first.seed),
                alpha=missing_to_none(first.alpha),
                trust_remote_code=bool(scores["trust_remote_code"].any()),
                columns=per_column,
            )
        )
    return variants


def _seed_key(keys: Sequence[tuple], column: str) -> tuple:
    """What seeds a column's resampling: a single score's own key, as summary.csv's row of it is
    resampled (the same interval in both), else the column's."""
    return keys[0] if len(keys) == 1 else (*keys[0][:2], column)


def _part(row, values) -> Part:
    return Part(float(row.score), int(row.num_examples), values)


def summary_intervals(summary: pd.DataFrame, scoring: Scoring, outcomes: Outcomes) -> pd.DataFrame:
    """`summary` with each row's 95% interval (``ci_low``, ``ci_high``) and how it was made
    (``interval``): Wilson's for a dataset's share of questions (a headline metric scored 0 or 1),
    a bootstrap over its questions where their values are known and are not 0 or 1, else none."""
    intervals = []
    for row in summary.itertuples(index=False):
        headline = scoring.headline(row.benchmark)
        credit = scoring.partial_credit.get(row.benchmark)
        is_headline = headline.metric in (None, row.metric) and row.metric != credit
        key = (row.pair, row.variant, row.benchmark, row.dataset, row.metric)
        estimate = measure(key, [_part(row, outcomes.get(key))], headline.proportion and is_headline).estimate
        intervals.append((estimate.low, estimate.high, estimate.method))
    low, high, method = zip(*intervals, strict=True) if intervals else ((), (), ())
    return summary.assign(
        ci_low=pd.Series(low, dtype=float, index=summary.index),
        ci_high=pd.Series(high, dtype=float, index=summary.index),
        interval=pd.Series(method, dtype=object, index=summary.index),
    )
