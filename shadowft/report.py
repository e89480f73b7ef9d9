"""Collect the evaluation scores into a tidy table and paper-style tables (Markdown and HTML).

The workflow hands the report one record per score file (``ScoreRecord``): the pair, the
variant, every sweep dimension of the run it belongs to (``DIMENSIONS``; None where a
dimension does not apply, as for the base and instruct models) and the path of the
``scores.csv`` that shadowft.opencompass wrote (columns benchmark, dataset, metric, score,
num_examples). ``summarize`` stacks them into one tidy ``summary.csv`` and renders the
paper's layout: per pair and sweep setting (``Setting``: stage, tuning, learning rate, LoRA
rank) one table, variants as rows, benchmarks, group averages and the average as columns,
each score followed by its difference from Instruct and, for the graft and the tuned base,
from Instruct tuned directly in the same setting (the paper's baseline). Runs that differ
only by seed are one row: the mean, ± the standard deviation over the seeds.

``shadowft.figures`` draws the same tables (``pair_tables``).
"""

from __future__ import annotations

import html
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import pandas as pd

from shadowft.io import atomic_write_text
from shadowft.opencompass import SCORES_COLUMNS
from shadowft.runs import Variant

SCORE_COLUMNS = SCORES_COLUMNS  # the columns shadowft.opencompass writes
# The sweep dimensions of a run, in the order the summary lists them.
DIMENSIONS = ("stage", "tuning", "learning_rate", "lora_rank", "seed", "alpha")
SETTING_DIMENSIONS = ("stage", "tuning", "learning_rate", "lora_rank")  # a table each; seeds are averaged
SUMMARY_COLUMNS = ("pair", "variant", "kind", *DIMENSIONS, *SCORE_COLUMNS)
AVERAGE = "Average"
KINDS = ("base", "instruct", "base_ft", "instruct_ft", "shadow")  # also the rows' order in a table
UNTUNED = ("base", "instruct")
REFERENCE = "instruct"  # every Shadow-FT claim is made against it
BASELINE = "instruct_ft"  # instruct tuned directly: the paper's baseline
TUNING_LABELS = {"lora": "LoRA", "full": "Full"}
_INTEGER_DIMENSIONS = ("lora_rank", "seed")
_NUMBER_DIMENSIONS = ("learning_rate", "alpha")
_TEXT_DIMENSIONS = ("stage", "tuning")


_SHADOW = re.compile(r"shadow_a(?P<alpha>\d+(?:\.\d+)?)")


def variant_kind(variant: str) -> str:
    """What a variant is, from its last path part: base, instruct, base_ft, instruct_ft or shadow."""
    run, _, last = variant.rpartition("/")
    if run and _SHADOW.fullmatch(last):
        return "shadow"
    if last in UNTUNED and not run or last in ("base_ft", "instruct_ft") and run:
        return last
    raise ValueError(
        f"unknown variant {variant!r}; expected base, instruct, {{run}}/instruct_ft, {{run}}/base_ft "
        "or {run}/shadow_a{alpha}"
    )


@dataclass(frozen=True)
class ScoreRecord:
    """One scores.csv and where it belongs: the pair, the variant and the run's sweep values."""

    pair: str
    variant: str
    benchmark: str
    scores: Path
    stage: str | None = None
    tuning: str | None = None
    learning_rate: float | None = None
    lora_rank: int | None = None
    seed: int | None = None
    alpha: float | None = None

    @classmethod
    def parse(cls, record: Mapping, index: int = 0) -> ScoreRecord:
        """A record from the workflow's mapping; unknown or missing keys and bad values are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        missing = [key for key in ("pair", "variant", "benchmark", "scores") if record.get(key) is None]
        if unknown or missing:
            problems = [f"lacks {', '.join(missing)}"] if missing else []
            problems += [f"has unknown key(s) {', '.join(unknown)}"] if unknown else []
            raise ValueError(f"score record {index} {' and '.join(problems)}: {dict(record)!r}")
        values = {key: record.get(key) for key in known}
        try:
            for key in _NUMBER_DIMENSIONS:
                values[key] = None if values[key] is None else float(values[key])
            for key in _INTEGER_DIMENSIONS:
                if values[key] is not None and float(values[key]) != int(values[key]):
                    raise ValueError(f"{key} must be a whole number")
                values[key] = None if values[key] is None else int(values[key])
        except (TypeError, ValueError) as error:
            raise ValueError(f"score record {index}: {error}: {dict(record)!r}") from None
        for key in ("pair", "variant", "benchmark", *_TEXT_DIMENSIONS):
            values[key] = None if values[key] is None else str(values[key])
        parsed = cls(**{**values, "scores": Path(values["scores"])})
        kind = variant_kind(parsed.variant)
        if (kind == "shadow") != (parsed.alpha is not None):
            raise ValueError(f"score record {index}: alpha is given exactly for shadow variants: {dict(record)!r}")
        if kind == "shadow" and float(_SHADOW.fullmatch(parsed.variant.rpartition("/")[2])["alpha"]) != parsed.alpha:
            raise ValueError(
                f"score record {index}: alpha {parsed.alpha:g} differs from the variant's: {dict(record)!r}"
            )
        if kind not in UNTUNED and parsed.tuning is None:
            raise ValueError(f"score record {index}: a tuned variant needs its tuning: {dict(record)!r}")
        return parsed

    @property
    def kind(self) -> str:
        return variant_kind(self.variant)


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
    """One variant's line of a table: kind, alpha (grafts), label and a cell per column."""

    kind: str
    alpha: float | None
    label: str
    cells: dict[str, Cell]
    seeds: tuple[int, ...] = ()


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


def read_scores(records: Sequence[Mapping | ScoreRecord]) -> pd.DataFrame:
    """The tidy table of every record's scores (columns SUMMARY_COLUMNS), in report order."""
    if not records:
        raise ValueError("no score records given")
    parsed = [r if isinstance(r, ScoreRecord) else ScoreRecord.parse(r, i) for i, r in enumerate(records)]
    summary = pd.concat([_read_record(record) for record in parsed], ignore_index=True)
    key = ["pair", "variant", "benchmark", "dataset", "metric"]
    duplicated = summary[summary.duplicated(key)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        raise ValueError("the same score appears twice: " + ", ".join(f"{k}={first[k]}" for k in key))
    return _typed(_order(summary))


def read_summary(path: Path) -> pd.DataFrame:
    """summary.csv read back with the types read_scores gives (names stay names, gaps are missing)."""
    frame = pd.read_csv(path, keep_default_na=False, na_values={c: [""] for c in (*DIMENSIONS, "score")})
    return _typed(frame)


def summarize(
    records: Sequence[Mapping | ScoreRecord],
    out_csv: Path,
    out_md: Path,
    *,
    out_html: Path | None = None,
    benchmark_groups: Mapping[str, Sequence[str]] | None = None,
    similarity: Mapping[str, Path] | None = None,
    digits: int = 1,
) -> pd.DataFrame:
    """Write the tidy ``out_csv`` and the paper-style tables to ``out_md`` (and ``out_html``).

    ``benchmark_groups`` maps a group name to its benchmarks: each group gets a column with
    their unweighted mean. ``similarity`` maps a pair to its similarity CSV
    (shadowft.similarity), whose overall sigma is quoted with the pair's tables. Returns the
    tidy frame written to ``out_csv``.
    """
    summary = read_scores(records)
    groups = dict(benchmark_groups or {})
    sigmas = {pair: overall_sigma(Path(path)) for pair, path in (similarity or {}).items()}
    sections = report_sections(summary, groups, sigmas)
    atomic_write_text(Path(out_csv), summary.to_csv(index=False))
    atomic_write_text(Path(out_md), render_markdown(sections, digits=digits))
    if out_html is not None:
        atomic_write_text(Path(out_html), render_html(sections, digits=digits))
    return summary


def overall_sigma(similarity_csv: Path) -> float:
    """The overall sigma of a similarity CSV written by shadowft.similarity."""
    table = read_similarity(similarity_csv)
    overall = table.loc[table["level"] == "overall", "sigma"]
    if len(overall) != 1:
        raise ValueError(f"{similarity_csv}: expected one row with level 'overall', found {len(overall)}")
    return float(overall.iloc[0])


def read_similarity(similarity_csv: Path) -> pd.DataFrame:
    """A similarity CSV (shadowft.similarity.COLUMNS), checked for the columns the report reads."""
    if not Path(similarity_csv).is_file():
        raise FileNotFoundError(f"similarity table {similarity_csv} does not exist")
    table = pd.read_csv(similarity_csv, keep_default_na=False, na_values={"layer": [""], "sigma": [""]})
    missing = [column for column in ("level", "name", "layer", "sigma") if column not in table.columns]
    if missing:
        raise ValueError(f"{similarity_csv} lacks column(s) {', '.join(missing)}")
    return table


def pair_tables(summary: pd.DataFrame, pair: str, benchmark_groups: Mapping[str, Sequence[str]]) -> list[ScoreTable]:
    """The pair's tables: one per sweep setting, Base and Instruct in each; seeds averaged per row."""
    rows = summary[summary["pair"] == pair]
    if rows.empty:
        raise ValueError(f"no scores for pair {pair!r}")
    benchmark_columns, group_columns = _columns(rows, pair, benchmark_groups)
    runs = _runs(rows, benchmark_columns, group_columns)
    settings = list(dict.fromkeys(run["setting"] for run in runs if run["kind"] not in UNTUNED))
    tables = []
    for setting in settings or [None]:
        members = [run for run in runs if run["kind"] in UNTUNED or run["setting"] == setting]
        keys = sorted({(run["kind"], run["alpha"]) for run in members}, key=lambda k: (KINDS.index(k[0]), k[1] or 0.0))
        table_rows = []
        for kind, alpha in keys:
            same = [run for run in members if (run["kind"], run["alpha"]) == (kind, alpha)]
            seeds = [run["seed"] for run in same]
            if len(set(seeds)) != len(seeds):
                names = ", ".join(sorted(run["variant"] for run in same))
                raise ValueError(f"pair {pair!r}: variants {names} are the same run (same setting, alpha and seed)")
            columns = [*benchmark_columns, *group_columns]
            cells = {column: Cell.of([run["scores"][column] for run in same]) for column in columns}
            label = variant_label(kind, setting, alpha)
            table_rows.append(Row(kind, alpha, label, cells, tuple(sorted(s for s in seeds if s is not None))))
        columns = [*benchmark_columns, *group_columns]
        tables.append(ScoreTable(pair, setting, columns, benchmark_columns, table_rows))
    return tables


@dataclass(frozen=True)
class PairSection:
    """What the report says about one pair: its tables, sigma, and the learning rates it ran."""

    pair: str
    tables: list[ScoreTable]
    sigma: float | None
    learning_rates: dict[str, list[float]]  # per tuning label

    @property
    def learning_rate_swept(self) -> bool:
        return learning_rate_swept(self.tables)


def learning_rate_swept(tables: Sequence[ScoreTable]) -> bool:
    """Whether some setting of these tables ran at more than one learning rate (else there is no curve to draw)."""
    return _sweeps_learning_rate(table.setting for table in tables if table.setting is not None)


def pairs_sweeping_learning_rate(records: Sequence[Mapping | ScoreRecord]) -> list[str]:
    """The pairs of these records where some setting ran at more than one learning rate."""
    parsed = [r if isinstance(r, ScoreRecord) else ScoreRecord.parse(r, i) for i, r in enumerate(records)]
    settings: dict[str, set[Setting]] = {}
    for record in parsed:
        if record.kind not in UNTUNED:
            setting = Setting(record.stage, record.tuning, record.learning_rate, record.lora_rank)
            settings.setdefault(record.pair, set()).add(setting)
    return [pair for pair, values in settings.items() if _sweeps_learning_rate(values)]


def _sweeps_learning_rate(settings: Iterable[Setting]) -> bool:
    rates: dict[tuple, set[float]] = {}
    for setting in settings:
        if setting.learning_rate is not None:
            key = (setting.stage, setting.tuning, setting.lora_rank)
            rates.setdefault(key, set()).add(setting.learning_rate)
    return any(len(values) > 1 for values in rates.values())


def report_sections(
    summary: pd.DataFrame, benchmark_groups: Mapping[str, Sequence[str]], sigmas: Mapping[str, float]
) -> list[PairSection]:
    sections = []
    for pair in dict.fromkeys(summary["pair"]):
        tables = pair_tables(summary, pair, benchmark_groups)
        rates: dict[str, list[float]] = {}
        for table in tables:
            if table.setting is not None and table.setting.learning_rate is not None:
                rates.setdefault(table.setting.tuning_label, []).append(table.setting.learning_rate)
        rates = {label: sorted(set(values)) for label, values in rates.items()}
        sections.append(PairSection(pair, tables, sigmas.get(pair), rates))
    return sections


# --- rendering -------------------------------------------------------------------------------


def table_caption(number: int, table: ScoreTable) -> str:
    """What a table shows, in a sentence or three: the rows, the cells, the differences."""
    title = f"Table {number}: {table.pair}" + (f", {table.setting.title}" if table.setting else "")
    has_reference = table.row(REFERENCE) is not None
    has_baseline = table.row(BASELINE) is not None
    if has_reference and has_baseline:
        compared = (
            f"in parentheses the difference from Instruct, then, for the graft and the tuned base, "
            f"from {table.baseline_label} (Instruct tuned directly, the paper's baseline)"
        )
    elif has_reference:
        compared = "in parentheses the difference from Instruct"
    elif has_baseline:
        compared = f"in parentheses, for the graft and the tuned base, the difference from {table.baseline_label}"
    else:
        compared = "no Instruct scores to compare with"
    parts = [f"{title}. Score per benchmark (higher is better); {compared}."]
    groups = [c for c in table.columns if c not in table.benchmark_columns and c != AVERAGE]
    if groups:
        parts.append(f"{', '.join(groups)}: unweighted mean over the group's benchmarks.")
    parts.append(f"{AVERAGE}: unweighted mean over the benchmarks (a benchmark of several metrics counts its first).")
    seeds = table.seeds
    if len(seeds) > 1:
        parts.append(
            f"Tuned variants: mean ± standard deviation over seeds {', '.join(map(str, seeds))} (n={len(seeds)}); "
            "differences are between means."
        )
    elif seeds:
        parts.append(f"One seed ({seeds[0]}).")
    return " ".join(parts)


def table_cells(table: ScoreTable, digits: int = 1) -> list[list[str]]:
    """The table as text: a header line, then one line per variant."""
    reference = table.row(REFERENCE)
    baseline = table.row(BASELINE)
    lines = [["Variant", *table.columns]]
    for row in table.rows:
        cells = [row.label]
        for column in table.columns:
            cell = row.cells[column]
            differences = []
            if reference is not None and row.kind != REFERENCE:
                differences.append(cell.mean - reference.cells[column].mean)
            if baseline is not None and row.kind in ("base_ft", "shadow"):
                differences.append(cell.mean - baseline.cells[column].mean)
            cells.append(_cell(cell, differences, digits))
        lines.append(cells)
    return lines


def render_markdown(sections: Sequence[PairSection], *, digits: int = 1) -> str:
    """summary.md: per pair a heading, sigma, and a captioned table per sweep setting."""
    out = ["# Shadow-FT results\n", _seeds_sentence(sections) + "\n"]
    number = 0
    for section in sections:
        out.append(f"## {section.pair}\n")
        out.extend(f"{note}\n" for note in _pair_notes(section))
        for table in section.tables:
            number += 1
            lines = table_cells(table, digits)
            text = [
                "| " + " | ".join(_escape(cell) for cell in lines[0]) + " |",
                "| :-- | " + " | ".join("--:" for _ in lines[0][1:]) + " |",
                *("| " + " | ".join(_escape(cell) for cell in line) + " |" for line in lines[1:]),
            ]
            heading = f"### {table.setting.title}\n\n" if table.setting else ""
            out.append(f"{heading}{table_caption(number, table)}\n\n" + "\n".join(text) + "\n")
    return "\n".join(out)


def render_html(sections: Sequence[PairSection], *, digits: int = 1) -> str:
    """summary.html: the same tables as summary.md, as one self-contained page (for the HTML report)."""
    style = (
        "body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1.5em}"
        "th,td{border:1px solid #ccc;padding:.25em .6em}td{text-align:right;font-variant-numeric:tabular-nums}"
        "td:first-child,th:first-child{text-align:left}th{background:#f3f3f3}caption{caption-side:top;"
        "text-align:left;max-width:60em;padding:.3em 0;font-size:.9em}"
    )
    body = ["<h1>Shadow-FT results</h1>", f"<p>{html.escape(_seeds_sentence(sections))}</p>"]
    number = 0
    for section in sections:
        body.append(f"<h2>{html.escape(section.pair)}</h2>")
        body.extend(f"<p>{html.escape(note)}</p>" for note in _pair_notes(section))
        for table in section.tables:
            number += 1
            lines = table_cells(table, digits)
            if table.setting:
                body.append(f"<h3>{html.escape(table.setting.title)}</h3>")
            rows = ["<tr>" + "".join(f"<th>{html.escape(cell)}</th>" for cell in lines[0]) + "</tr>"]
            rows += ["<tr>" + "".join(f"<td>{html.escape(cell)}</td>" for cell in line) + "</tr>" for line in lines[1:]]
            caption = f"<caption>{html.escape(table_caption(number, table))}</caption>"
            body.append("<table>" + caption + "".join(rows) + "</table>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>Shadow-FT results</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _seeds_sentence(sections: Sequence[PairSection]) -> str:
    seeds = sorted({seed for section in sections for table in section.tables for seed in table.seeds})
    if len(seeds) > 1:
        return (
            f"Seeds {', '.join(map(str, seeds))}: each tuned variant shows the mean ± the standard deviation over "
            "the seeds that ran it."
        )
    if seeds:
        return (
            f"One seed, {seeds[0]}. Scores move between seeds: compare runs of several seeds before reading a "
            "difference as a finding."
        )
    return "No tuned variants."


def _pair_notes(section: PairSection) -> list[str]:
    notes = []
    if section.sigma is not None:
        notes.append(
            f"Weight difference between base and instruct: sigma = {100 * section.sigma:.2f}% "
            "(sum|W_B - W_I| / (sum|W_B| + sum|W_I|), mean over the layers' tensors; "
            "the paper reports under 2% for Llama-3.1-8B)."
        )
    if section.learning_rates:
        rates = "; ".join(
            f"{label} {', '.join(f'{r:g}' for r in values)}" for label, values in section.learning_rates.items()
        )
        if section.learning_rate_swept:
            notes.append(f"Learning rates: {rates} (the learning-rate figure plots the scores against them).")
        else:
            notes.append(f"Learning rates: {rates}; one per setting, so there is no learning-rate figure.")
    return notes


def _cell(cell: Cell, differences: Sequence[float], digits: int) -> str:
    if math.isnan(cell.mean):
        return "–"
    text = f"{cell.mean:.{digits}f}"
    if cell.sd is not None:
        text += f" ± {cell.sd:.{digits}f}"
    shown = [d for d in differences if not math.isnan(d)]
    if not shown or len(shown) != len(differences):
        return text
    # Adding 0.0 turns a rounded -0.0 into 0.0, so no difference reads "-0.0".
    return text + " (" + ", ".join(f"{round(d, digits) + 0.0:+.{digits}f}" for d in shown) + ")"


def _escape(text: str) -> str:
    return str(text).replace("|", r"\|")


# --- reading ---------------------------------------------------------------------------------


def _read_record(record: ScoreRecord) -> pd.DataFrame:
    path = record.scores
    where = f"scores of pair {record.pair!r}, variant {record.variant!r}: {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    try:
        # Names such as "NA" stay names; only a score may be missing ("-" is OpenCompass's mark for a failed run).
        scores = pd.read_csv(path, keep_default_na=False, na_values={"score": ["", "-", "nan", "NaN"]})
    except pd.errors.EmptyDataError:
        raise ValueError(f"{where} is empty") from None
    missing = [column for column in SCORE_COLUMNS if column not in scores.columns]
    if missing:
        raise ValueError(f"{where} lacks column(s) {', '.join(missing)} (has {', '.join(scores.columns)})")
    if scores.empty:
        raise ValueError(f"{where} has no rows")
    try:
        scores["score"] = pd.to_numeric(scores["score"])
    except ValueError as error:
        raise ValueError(f"{where}: non-numeric score ({error})") from None
    unscored = scores[scores["score"].isna()]
    if not unscored.empty:
        first = unscored.iloc[0]
        raise ValueError(f"{where}: no score for {first['benchmark']}/{first['dataset']}/{first['metric']}")
    scores = scores[list(SCORE_COLUMNS)].astype({"benchmark": str, "dataset": str, "metric": str})
    if set(scores["benchmark"]) != {record.benchmark}:
        raise ValueError(
            f"{where} holds benchmark(s) {', '.join(sorted(set(scores['benchmark'])))}, not {record.benchmark!r}"
        )
    # Object columns throughout, so that frames with and without a dimension concatenate alike.
    dimensions = {name: pd.Series([getattr(record, name)] * len(scores), dtype=object) for name in DIMENSIONS}
    scores = scores.reset_index(drop=True).assign(
        pair=record.pair, variant=record.variant, kind=record.kind, **dimensions
    )
    return scores[list(SUMMARY_COLUMNS)]


def _typed(summary: pd.DataFrame) -> pd.DataFrame:
    """Text dimensions as objects (None when missing), numbers as floats, rank and seed as nullable integers."""
    missing = [column for column in SUMMARY_COLUMNS if column not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks column(s) {', '.join(missing)}")
    summary = summary[list(SUMMARY_COLUMNS)].copy()
    for column in _TEXT_DIMENSIONS:
        summary[column] = summary[column].astype(object).where(summary[column].notna() & (summary[column] != ""), None)
    for column in _NUMBER_DIMENSIONS:
        summary[column] = pd.to_numeric(summary[column]).astype(float)
    for column in _INTEGER_DIMENSIONS:
        summary[column] = pd.to_numeric(summary[column]).astype("Int64")
    return summary.astype({"pair": str, "variant": str, "kind": str, "benchmark": str, "dataset": str, "metric": str})


def _order(summary: pd.DataFrame) -> pd.DataFrame:
    """Pairs in order of first appearance; within a pair Base, Instruct, then each setting's runs."""
    pair_rank = {pair: rank for rank, pair in enumerate(dict.fromkeys(summary["pair"]))}
    setting_rank = {s: r for r, s in enumerate(dict.fromkeys(map(_setting_of, summary.itertuples(index=False))))}

    def key(row) -> tuple:
        untuned = row.kind in UNTUNED
        return (
            pair_rank[row.pair],
            -1 if untuned else setting_rank[_setting_of(row)],
            -1 if untuned or pd.isna(row.seed) else row.seed,
            KINDS.index(row.kind),
            0.0 if pd.isna(row.alpha) else row.alpha,
        )

    rows = list(summary.itertuples(index=False))
    order = sorted(range(len(rows)), key=lambda i: key(rows[i]))
    return summary.iloc[order].reset_index(drop=True)


def _missing_to_none(value):
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def _setting_of(row) -> Setting | None:
    if row.kind in UNTUNED:
        return None
    rank = _missing_to_none(row.lora_rank)
    rate = _missing_to_none(row.learning_rate)
    return Setting(
        _missing_to_none(row.stage),
        _missing_to_none(row.tuning),
        None if rate is None else float(rate),
        None if rank is None else int(rank),
    )


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


def _runs(rows: pd.DataFrame, benchmark_columns: list[str], group_columns: Mapping[str, list[str]]) -> list[dict]:
    """One entry per variant of the pair: kind, setting, seed, alpha and a score per column."""
    metrics = rows.groupby("benchmark")["metric"].nunique()
    multi_metric = set(metrics[metrics > 1].index)
    runs = []
    for variant, scores in rows.groupby("variant", sort=False):
        first = next(scores.itertuples())
        column = scores["benchmark"].where(
            ~scores["benchmark"].isin(multi_metric), scores["benchmark"] + " (" + scores["metric"] + ")"
        )
        # A benchmark of several datasets scores their unweighted mean.
        values = scores.assign(column=column).groupby("column")["score"].mean().to_dict()
        per_column = {c: float(values.get(c, math.nan)) for c in benchmark_columns}
        for average_column, members in group_columns.items():
            per_column[average_column] = statistics.fmean(per_column[c] for c in members)
        runs.append(
            {
                "variant": variant,
                "kind": first.kind,
                "setting": _setting_of(first),
                "seed": None if first.kind in UNTUNED else _missing_to_none(first.seed),
                "alpha": _missing_to_none(first.alpha),
                "scores": per_column,
            }
        )
    return runs
