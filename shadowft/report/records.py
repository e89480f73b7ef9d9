"""The report's input and its tidy table: one ``ScoreRecord`` per scores.csv, stacked into the
frame that summary.csv holds (``SUMMARY_COLUMNS``: the scores, ``TIDY_COLUMNS``, then each score's
95% interval, ``INTERVAL_COLUMNS``, which ``shadowft.report.tables.summary_intervals`` adds), typed
and in report order.

A record names its pair and variant (a name of ``shadowft.workflow.sweep``), the variant's sweep values
(``DIMENSIONS``; None where one does not apply, as for base and instruct), whether its models
ran their own code (``trust_remote_code``) and the scores.csv that shadowft.evaluation wrote,
read with its own reader (``shadowft.evaluation.results.read_scores``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import pandas as pd

from shadowft.evaluation.results import SCORES_COLUMNS, read_scores
from shadowft.workflow.plan import scores_path
from shadowft.workflow.sweep import Variant, VariantKind

# The sweep dimensions of a run, in the order the summary lists them.
DIMENSIONS = ("stage", "tuning", "learning_rate", "lora_rank", "seed", "alpha")
TIDY_COLUMNS = ("pair", "variant", "kind", "trust_remote_code", *DIMENSIONS, *SCORES_COLUMNS)
# A score's 95% interval, in points, and how it was made (shadowft.report.evidence); num_examples is its n.
INTERVAL_COLUMNS = ("ci_low", "ci_high", "interval")
SUMMARY_COLUMNS = (*TIDY_COLUMNS, *INTERVAL_COLUMNS)
# The variants' kinds in the order a table lists its rows.
KINDS = tuple(
    kind.value
    for kind in (
        VariantKind.BASE,
        VariantKind.INSTRUCT,
        VariantKind.BASE_FT,
        VariantKind.INSTRUCT_FT,
        VariantKind.SHADOW,
    )
)
UNTUNED = tuple(kind.value for kind in VariantKind if not kind.per_run)
_INTEGER_DIMENSIONS = ("lora_rank", "seed")
_NUMBER_DIMENSIONS = ("learning_rate", "alpha")
_TEXT_DIMENSIONS = ("stage", "tuning")
_REQUIRED = ("pair", "variant", "benchmark", "scores")


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
    trust_remote_code: bool = False  # whether a model this variant comes from ran its own code

    @classmethod
    def parse(cls, record: Mapping, index: int = 0) -> ScoreRecord:
        """A record from the workflow's mapping; unknown or missing keys, bad values and sweep
        values that are not the variant's (its name says them) are errors."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        missing = [key for key in _REQUIRED if record.get(key) is None]
        if unknown or missing:
            problems = [f"lacks {', '.join(missing)}"] if missing else []
            problems += [f"has unknown key(s) {', '.join(unknown)}"] if unknown else []
            raise ValueError(f"score record {index} {' and '.join(problems)}: {dict(record)!r}")
        try:
            values = _typed_values(record, known)
            variant = Variant.parse(values["variant"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"score record {index}: {error}: {dict(record)!r}") from None
        problem = _dimension_mismatch(values, variant)
        if problem:
            raise ValueError(f"score record {index}: {problem}: {dict(record)!r}")
        return cls(**values)

    @property
    def kind(self) -> str:
        return Variant.parse(self.variant).kind.value


def score_records(
    results: Path, pairs: Sequence[str], variants: Sequence[str], benchmarks: Sequence[str], remote_code: Sequence[str]
) -> list[ScoreRecord]:
    """The record of every scores.csv of an experiment: each pair's every variant on every benchmark,
    under `results` (the folder holding results/). `remote_code` names the models that may run their
    own code, as ``pair:role``: a variant is marked when a job behind it ran one of them."""
    records = []
    for pair in pairs:
        for name in variants:
            variant = Variant.parse(name)
            trusted = any(f"{pair}:{role}" in remote_code for role in variant.roles_run)
            for benchmark in benchmarks:
                scores = Path(results) / scores_path(pair, name, benchmark)
                records.append(
                    ScoreRecord(pair, name, benchmark, scores, **variant.dimensions(), trust_remote_code=trusted)
                )
    return records


def parse_records(records: Sequence[Mapping | ScoreRecord]) -> list[ScoreRecord]:
    """The workflow's records (mappings) as ScoreRecords; records already parsed pass as they are."""
    return [r if isinstance(r, ScoreRecord) else ScoreRecord.parse(r, i) for i, r in enumerate(records)]


def _typed_values(record: Mapping, known: set[str]) -> dict:
    values = {key: record.get(key) for key in known}
    for key in _NUMBER_DIMENSIONS:
        values[key] = None if values[key] is None else float(values[key])
    for key in _INTEGER_DIMENSIONS:
        if values[key] is not None and float(values[key]) != int(values[key]):
            raise ValueError(f"{key} must be a whole number")
        values[key] = None if values[key] is None else int(values[key])
    for key in ("pair", "variant", "benchmark", *_TEXT_DIMENSIONS):
        values[key] = None if values[key] is None else str(values[key])
    if not isinstance(values["trust_remote_code"] or False, bool):
        raise ValueError(f"trust_remote_code must be true or false, not {values['trust_remote_code']!r}")
    values["trust_remote_code"] = bool(values["trust_remote_code"])
    values["scores"] = Path(values["scores"])
    return values


def _dimension_mismatch(values: Mapping, variant: Variant) -> str | None:
    """How the record's sweep values differ from those its variant's name says, or None."""
    for key, expected in variant.dimensions().items():
        given = values[key]
        if given == expected:
            continue
        if key == "alpha" and (given is None or expected is None):
            return "alpha is given exactly for shadow variants"
        if given is None:
            return f"a tuned variant needs its {key}"
        if expected is None:
            return f"{key} is given, but {variant.name} has none"
        return f"{key} {given!r} differs from the variant's ({expected!r}, from its name {variant.name})"
    return None


def tidy_scores(records: Sequence[Mapping | ScoreRecord]) -> pd.DataFrame:
    """The tidy table of every record's scores (columns TIDY_COLUMNS), in report order."""
    if not records:
        raise ValueError("no score records given")
    summary = pd.concat([_read_record(record) for record in parse_records(records)], ignore_index=True)
    key = ["pair", "variant", "benchmark", "dataset", "metric"]
    duplicated = summary[summary.duplicated(key)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        raise ValueError("the same score appears twice: " + ", ".join(f"{k}={first[k]}" for k in key))
    return _typed(_order(summary), TIDY_COLUMNS)


def read_summary(path: Path) -> pd.DataFrame:
    """summary.csv read back with the types it was written with (names stay names, gaps are missing)."""
    missing = {c: [""] for c in (*DIMENSIONS, "score", "ci_low", "ci_high")}
    frame = pd.read_csv(path, keep_default_na=False, na_values=missing)
    return _typed(frame, SUMMARY_COLUMNS).astype({"ci_low": float, "ci_high": float, "interval": str})


def _read_record(record: ScoreRecord) -> pd.DataFrame:
    path = record.scores
    where = f"scores of pair {record.pair!r}, variant {record.variant!r}: {path}"
    if not path.is_file():
        raise FileNotFoundError(f"{where} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{where} is empty")
    try:
        rows = read_scores(path)
    except ValueError as error:
        raise ValueError(f"scores of pair {record.pair!r}, variant {record.variant!r}: {error}") from None
    if not rows:
        raise ValueError(f"{where} has no rows")
    unscored = next((row for row in rows if math.isnan(row["score"])), None)
    if unscored is not None:
        raise ValueError(f"{where}: no score for {unscored['benchmark']}/{unscored['dataset']}/{unscored['metric']}")
    benchmarks = sorted({row["benchmark"] for row in rows})
    if benchmarks != [record.benchmark]:
        raise ValueError(f"{where} holds benchmark(s) {', '.join(benchmarks)}, not {record.benchmark!r}")
    scores = pd.DataFrame(rows, columns=list(SCORES_COLUMNS))
    # Object columns throughout, so that frames with and without a dimension concatenate alike.
    dimensions = {name: pd.Series([getattr(record, name)] * len(scores), dtype=object) for name in DIMENSIONS}
    scores = scores.assign(
        pair=record.pair, variant=record.variant, kind=record.kind, trust_remote_code=record.trust_remote_code
    ).assign(**dimensions)
    return scores[list(TIDY_COLUMNS)]


def _typed(summary: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Text dimensions as objects (None when missing), numbers as floats, rank and seed as nullable integers."""
    missing = [column for column in columns if column not in summary.columns]
    if missing:
        raise ValueError(f"summary lacks column(s) {', '.join(missing)}")
    summary = summary[list(columns)].copy()
    for column in _TEXT_DIMENSIONS:
        summary[column] = summary[column].astype(object).where(summary[column].notna() & (summary[column] != ""), None)
    for column in _NUMBER_DIMENSIONS:
        summary[column] = pd.to_numeric(summary[column]).astype(float)
    for column in _INTEGER_DIMENSIONS:
        summary[column] = pd.to_numeric(summary[column]).astype("Int64")
    summary["trust_remote_code"] = summary["trust_remote_code"].map(_boolean)
    return summary.astype({"pair": str, "variant": str, "kind": str, "benchmark": str, "dataset": str, "metric": str})


def _boolean(value) -> bool:
    """A trust_remote_code cell: a bool, or the text summary.csv holds (True, False)."""
    if isinstance(value, str):
        if value not in ("True", "False"):
            raise ValueError(f"summary: trust_remote_code must be True or False, not {value!r}")
        return value == "True"
    return bool(value)


def missing_to_none(value):
    """A frame's missing value (NaN, NA) as None; anything else as it is."""
    return None if value is None or (not isinstance(value, str) and pd.isna(value)) else value


def _order(summary: pd.DataFrame) -> pd.DataFrame:
    """Pairs in order of first appearance; within a pair Base, Instruct, then each setting's runs."""
    pair_rank = {pair: rank for rank, pair in enumerate(dict.fromkeys(summary["pair"]))}
    settings = [setting_values(row) for row in summary.itertuples(index=False)]
    setting_rank = {setting: rank for rank, setting in enumerate(dict.fromkeys(settings))}

    def key(index: int) -> tuple:
        row = rows[index]
        untuned = row.kind in UNTUNED
        return (
            pair_rank[row.pair],
            -1 if untuned else setting_rank[settings[index]],
            -1 if untuned or pd.isna(row.seed) else row.seed,
            KINDS.index(row.kind),
            0.0 if pd.isna(row.alpha) else row.alpha,
        )

    rows = list(summary.itertuples(index=False))
    return summary.iloc[sorted(range(len(rows)), key=key)].reset_index(drop=True)


def setting_values(row) -> tuple[str | None, str | None, float | None, int | None] | None:
    """What makes a row's table, everything but seed and alpha: (stage, tuning, learning rate,
    LoRA rank), or None for base and instruct."""
    if row.kind in UNTUNED:
        return None
    rate, rank = missing_to_none(row.learning_rate), missing_to_none(row.lora_rank)
    return (
        missing_to_none(row.stage),
        missing_to_none(row.tuning),
        None if rate is None else float(rate),
        None if rank is None else int(rank),
    )
