"""The paper's tables, computed from the tidy frame: per pair and sweep setting (``Setting``:
stage, tuning, learning rate, LoRA rank) one ``ScoreTable``, variants as rows, benchmarks, group
averages and the average as columns. Runs that differ only by seed are one row, each cell the
mean and standard deviation over the seeds (``Cell``).

``shadowft.report.figures`` draws the same tables; ``shadowft.report.document`` writes them as text.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

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
class ScoreTable:
    """The paper's table for one pair and sweep setting (None: a pair with untuned variants only)."""

    pair: str
    setting: Setting | None
    columns: list[str]  # benchmarks, then group averages, then the average
    benchmark_columns: list[str]
    rows: list[Row] = field(default_factory=list)

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


def pair_tables(summary: pd.DataFrame, pair: str, benchmark_groups: Mapping[str, Sequence[str]]) -> list[ScoreTable]:
    """The pair's tables: one per sweep setting, Base and Instruct in each; seeds averaged per row."""
    rows = summary[summary["pair"] == pair]
    if rows.empty:
        raise ValueError(f"no scores for pair {pair!r}")
    benchmark_columns, group_columns = _columns(rows, pair, benchmark_groups)
    columns = [*benchmark_columns, *group_columns]
    variants = _variant_scores(rows, benchmark_columns, group_columns)
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
        tables.append(ScoreTable(pair, setting, columns, benchmark_columns, table_rows))
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
    benchmark_groups: Mapping[str, Sequence[str]],
    sigmas: Mapping[str, float],
    overlaps: Mapping[str, Sequence[str]] | None = None,
) -> list[PairSection]:
    """Per pair, in order of first appearance: its tables, its sigma, the learning rates it ran and
    its `overlaps` sentences."""
    sections = []
    for pair in dict.fromkeys(summary["pair"]):
        tables = pair_tables(summary, pair, benchmark_groups)
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


def _columns(
    rows: pd.DataFrame, pair: str, benchmark_groups: Mapping[str, Sequence[str]]
) -> tuple[list[str], dict[str, list[str]]]:
    """The benchmark columns (benchmark, or "benchmark (metric)" when it has several), and per
    average column ("{group} avg", then the Average over every benchmark) the columns it averages:
    one per benchmark, its first metric (IFEval's strict prompt accuracy, as the paper reports it),
    so a benchmark of several metrics weighs no more than one of a single metric."""
    benchmarks = list(dict.fromkeys(rows["benchmark"]))
    grouped = [b for members in benchmark_groups.values() for b in members if b in benchmarks]
    benchmarks = list(dict.fromkeys([*grouped, *benchmarks]))  # grouped benchmarks first, in group order
    columns: dict[str, list[str]] = {}
    for benchmark in benchmarks:
        metrics = list(dict.fromkeys(rows.loc[rows["benchmark"] == benchmark, "metric"]))
        columns[benchmark] = [benchmark] if len(metrics) == 1 else [f"{benchmark} ({metric})" for metric in metrics]
    group_columns = {}
    for group, members in benchmark_groups.items():
        absent = [b for b in members if b not in benchmarks]
        if absent:
            raise ValueError(f"benchmark group {group!r}: pair {pair!r} has no scores for {', '.join(absent)}")
        group_columns[f"{group} avg"] = [columns[b][0] for b in members]
    group_columns[AVERAGE] = [names[0] for names in columns.values()]
    return [column for names in columns.values() for column in names], group_columns


def _variant_scores(
    rows: pd.DataFrame, benchmark_columns: list[str], group_columns: Mapping[str, list[str]]
) -> list[_VariantScores]:
    """One entry per variant of the pair: kind, setting, seed, alpha and a score per column."""
    metrics = rows.groupby("benchmark")["metric"].nunique()
    multi_metric = set(metrics[metrics > 1].index)
    variants = []
    for _, scores in rows.groupby("variant", sort=False):
        first = next(scores.itertuples())
        column = scores["benchmark"].where(
            ~scores["benchmark"].isin(multi_metric), scores["benchmark"] + " (" + scores["metric"] + ")"
        )
        # A benchmark of several datasets scores their unweighted mean.
        values = scores.assign(column=column).groupby("column")["score"].mean().to_dict()
        per_column = {c: float(values.get(c, math.nan)) for c in benchmark_columns}
        for average_column, members in group_columns.items():
            per_column[average_column] = statistics.fmean(per_column[c] for c in members)
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
