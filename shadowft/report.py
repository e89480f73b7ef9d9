"""Collect the evaluation scores into a tidy table, paper-style Markdown tables and a plot.

Each evaluation writes ``results/{pair}/eval/{variant}/{benchmark}/scores.csv`` with
the columns benchmark, dataset, metric, score, num_examples. ``summarize`` stacks
them into one tidy ``summary.csv`` and renders ``summary.md``: one table per model
pair, variants as rows, benchmarks as columns, each score followed by its
difference from the Instruct model, the reference every Shadow-FT claim is made
against. ``plot_scores`` draws the same numbers as grouped bars.

Variant names follow the result paths (shadowft.runs names them): ``base``, ``instruct``,
``{run}/instruct_ft``, ``{run}/base_ft`` and ``{run}/shadow_a{alpha}``.
"""

from __future__ import annotations

import math
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from shadowft import runs
from shadowft.io import atomic_write_text
from shadowft.opencompass import SCORES_COLUMNS

SCORE_COLUMNS = SCORES_COLUMNS  # the columns shadowft.opencompass writes
SUMMARY_COLUMNS = ("pair", "variant", "tuning", "alpha", *SCORE_COLUMNS)
AVERAGE = "Average"
REFERENCE_VARIANT = "instruct"

_TUNING_LABELS = {"lora": "LoRA", "full": "Full"}
# Within a run's group: the tuned base, the paper's baseline (tuned instruct), then the grafts.
_KIND_RANK = {"base": 0, "instruct": 1, "base_ft": 2, "instruct_ft": 3, "shadow": 4}


@dataclass(frozen=True)
class Variant:
    """A parsed variant name such as ``sft-lora-lr1e-4-r8-s0/shadow_a0.5`` (shadowft.runs)."""

    name: str
    kind: str  # base | instruct | base_ft | instruct_ft | shadow
    tuning: str = ""
    alpha: float | None = None
    run: str = ""  # the run's name; empty for base and instruct
    stage: str = ""

    @classmethod
    def parse(cls, name: str) -> Variant:
        variant = runs.Variant.parse(name)
        if variant.run is None:
            return cls(name, variant.kind.value)
        run = variant.run
        return cls(name, variant.kind.value, run.tuning, variant.alpha, run.name, run.stage)

    @property
    def label(self) -> str:
        tuning = _TUNING_LABELS.get(self.tuning, self.tuning)
        if self.stage == "dpo":
            tuning = f"DPO-{tuning}"
        if self.kind == "shadow":
            return f"Shadow-{tuning} (α={self.alpha:g})"
        if self.tuning:
            return f"{self.kind.removesuffix('_ft').capitalize()} + {tuning}"
        return self.kind.capitalize()


def summarize(
    records: Sequence[dict],
    out_csv: Path,
    out_md: Path,
    *,
    out_png: Path | None = None,
    similarity: Mapping[str, Path] | None = None,
    digits: int = 1,
    seed: int | None = None,
) -> pd.DataFrame:
    """Stack the scores of ``records`` into ``out_csv`` and tabulate them in ``out_md``.

    ``records`` are ``{"pair": str, "variant": str, "scores": Path}``, one per
    scores.csv. Returns the tidy frame written to ``out_csv`` (columns
    ``SUMMARY_COLUMNS``; ``tuning`` is empty and ``alpha`` NaN where they do not apply).
    ``similarity`` maps a pair to its similarity CSV (shadowft.similarity), whose
    overall sigma is quoted under the pair's table; ``out_png`` also draws the scores.
    ``seed`` is the experiment's seed, which the Markdown states.
    """
    if not records:
        raise ValueError("summarize: no score records given")
    summary = _order(pd.concat([_read_record(index, record) for index, record in enumerate(records)]))
    key = ["pair", "variant", "benchmark", "dataset", "metric"]
    duplicated = summary[summary.duplicated(key)]
    if not duplicated.empty:
        first = duplicated.iloc[0]
        raise ValueError("summarize: the same score appears twice: " + ", ".join(f"{k}={first[k]}" for k in key))

    atomic_write_text(Path(out_csv), summary.to_csv(index=False))
    sigmas = {pair: overall_sigma(Path(path)) for pair, path in (similarity or {}).items()}
    atomic_write_text(Path(out_md), render_markdown(summary, digits=digits, sigmas=sigmas, seed=seed))
    if out_png is not None:
        plot_scores(summary, Path(out_png))
    return summary


def overall_sigma(similarity_csv: Path) -> float:
    """The overall sigma of a similarity CSV written by shadowft.similarity."""
    if not Path(similarity_csv).is_file():
        raise FileNotFoundError(f"similarity table {similarity_csv} does not exist")
    table = pd.read_csv(similarity_csv)
    missing = [column for column in ("level", "sigma") if column not in table.columns]
    if missing:
        raise ValueError(f"{similarity_csv} lacks column(s) {', '.join(missing)}")
    overall = table.loc[table["level"] == "overall", "sigma"]
    if len(overall) != 1:
        raise ValueError(f"{similarity_csv}: expected one row with level 'overall', found {len(overall)}")
    return float(overall.iloc[0])


def score_table(summary: pd.DataFrame, pair: str) -> pd.DataFrame:
    """Scores of one pair: variants (in report order) as rows, benchmarks and the average as columns.

    A benchmark with several datasets gets their unweighted mean; one reported with
    several metrics gets a column per metric. The average is over the benchmark
    columns and is NaN for a variant missing any of them.
    """
    rows = summary[summary["pair"] == pair]
    if rows.empty:
        raise ValueError(f"no scores for pair {pair!r}")
    metrics_per_benchmark = rows.groupby("benchmark", sort=False)["metric"].nunique()
    column = rows["benchmark"].where(
        rows["benchmark"].map(metrics_per_benchmark) == 1, rows["benchmark"] + " (" + rows["metric"] + ")"
    )
    table = rows.assign(column=column).pivot_table(
        index="variant", columns="column", values="score", aggfunc="mean", dropna=False, sort=False
    )
    table = table.reindex(index=_variant_order(rows["variant"]), columns=list(dict.fromkeys(column)))
    table[AVERAGE] = table.mean(axis=1, skipna=False)
    table.columns.name = None
    return table


def render_markdown(
    summary: pd.DataFrame, *, digits: int = 1, sigmas: Mapping[str, float] | None = None, seed: int | None = None
) -> str:
    """The Markdown report: per pair a caption and a table of scores with their difference from Instruct."""
    sections = ["# Shadow-FT results\n"]
    if seed is not None:
        sections.append(
            f"One run, seed {seed} (the config's `seed`). Scores move between seeds: "
            "compare runs of several seeds before reading a difference as a finding.\n"
        )
    for number, pair in enumerate(dict.fromkeys(summary["pair"]), start=1):
        table = score_table(summary, pair)
        reference = table.loc[REFERENCE_VARIANT] if REFERENCE_VARIANT in table.index else None
        rows = summary[summary["pair"] == pair]
        averaged = rows.duplicated(["variant", "benchmark", "metric"]).any()
        lines = [
            "| " + " | ".join(_escape(cell) for cell in ["Variant", *table.columns]) + " |",
            "| :-- | " + " | ".join("--:" for _ in table.columns) + " |",
        ]
        differences = None if reference is None else table - reference
        for variant, scores in table.iterrows():
            shown = differences is not None and variant != REFERENCE_VARIANT
            cells = [
                _cell(score, differences.at[variant, column] if shown else None, digits)
                for column, score in scores.items()
            ]
            lines.append("| " + " | ".join([_escape(Variant.parse(variant).label), *cells]) + " |")
        caption = _caption(number, pair, has_reference=reference is not None, averaged_datasets=averaged)
        section = f"## {pair}\n\n{caption}\n\n" + "\n".join(lines) + "\n"
        if sigmas and pair in sigmas:
            section += (
                f"\nWeight difference between base and instruct: sigma = {100 * sigmas[pair]:.2f}% "
                "(sum|W_B - W_I| / (sum|W_B| + sum|W_I|), mean over the layers' tensors; "
                "the paper reports under 2% for Llama-3.1-8B).\n"
            )
        sections.append(section)
    return "\n".join(sections)


def _caption(number: int, pair: str, *, has_reference: bool, averaged_datasets: bool) -> str:
    compared = "in parentheses the difference from Instruct" if has_reference else "no Instruct scores to compare with"
    parts = [
        f"Table {number}: {pair}. Score per benchmark (higher is better); {compared}.",
        f"{AVERAGE}: unweighted mean over the benchmarks.",
    ]
    if averaged_datasets:
        parts.append("Benchmarks with several datasets show their unweighted mean.")
    return " ".join(parts)


def plot_scores(summary: pd.DataFrame, out_png: Path) -> Path:
    """Draw grouped bars (one group per benchmark, one bar per variant), one panel per pair."""
    pairs = list(dict.fromkeys(summary["pair"]))
    tables = [score_table(summary, pair) for pair in pairs]
    widest = max(table.shape[0] * table.shape[1] for table in tables)
    # One colour per variant across all panels, so a variant reads the same everywhere.
    colours = {name: f"C{rank % 10}" for rank, name in enumerate(_variant_order(summary["variant"]))}
    figure = Figure(figsize=(max(6.0, 0.25 * widest + 2.5), 3.6 * len(pairs)), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(len(pairs), 1, squeeze=False)[:, 0]
    for ax, pair, table in zip(axes, pairs, tables, strict=True):
        groups = range(len(table.columns))
        width = 0.8 / len(table.index)
        for position, (variant, scores) in enumerate(table.iterrows()):
            offsets = [group - 0.4 + width * (position + 0.5) for group in groups]
            ax.bar(
                offsets, scores.to_numpy(dtype=float), width, color=colours[variant], label=Variant.parse(variant).label
            )
        ax.set_xticks(list(groups), list(table.columns))
        ax.set_ylabel("score")
        ax.set_title(pair)
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    # Same temp-then-rename discipline as shadowft.io, for binary output.
    partial = out_png.with_name(f".{out_png.name}.tmp-{secrets.token_hex(4)}")
    try:
        figure.savefig(partial, format="png", dpi=120)
        os.replace(partial, out_png)
    finally:
        partial.unlink(missing_ok=True)
    return out_png


def _read_record(index: int, record: dict) -> pd.DataFrame:
    missing_keys = [key for key in ("pair", "variant", "scores") if key not in record]
    if missing_keys:
        raise ValueError(f"score record {index} lacks {', '.join(missing_keys)}: {record!r}")
    pair, variant, path = record["pair"], Variant.parse(record["variant"]), Path(record["scores"])
    where = f"scores of pair {pair!r}, variant {variant.name!r}: {path}"
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
    return scores.assign(
        pair=pair,
        variant=variant.name,
        tuning=variant.tuning,
        alpha=math.nan if variant.alpha is None else variant.alpha,
    )[list(SUMMARY_COLUMNS)]


def _order(summary: pd.DataFrame) -> pd.DataFrame:
    """Sort pairs by first appearance and variants into report order; rows keep their file order."""
    pair_rank = {pair: rank for rank, pair in enumerate(dict.fromkeys(summary["pair"]))}
    variant_rank = {name: rank for rank, name in enumerate(_variant_order(summary["variant"]))}
    return summary.sort_values(
        ["pair", "variant"],
        key=lambda column: column.map(pair_rank if column.name == "pair" else variant_rank),
        kind="stable",
    ).reset_index(drop=True)


def _variant_order(names: Iterable[str]) -> list[str]:
    """Base, Instruct, then per run (in order of first appearance): base_ft, instruct_ft, shadows by alpha."""
    variants = [Variant.parse(name) for name in dict.fromkeys(names)]
    run_rank = {run: rank for rank, run in enumerate(dict.fromkeys(v.run for v in variants if v.run))}

    def key(variant: Variant) -> tuple[int, int, float]:
        group = run_rank[variant.run] if variant.run else -1
        return (group, _KIND_RANK[variant.kind], variant.alpha or 0.0)

    return [variant.name for variant in sorted(variants, key=key)]


def _cell(score: float, difference: float | None, digits: int) -> str:
    if math.isnan(score):
        return "–"
    text = f"{score:.{digits}f}"
    if difference is None or math.isnan(difference):
        return text
    # Adding 0.0 turns a rounded -0.0 into 0.0, so no difference reads "-0.0".
    return f"{text} ({round(difference, digits) + 0.0:+.{digits}f})"


def _escape(text: str) -> str:
    return str(text).replace("|", r"\|")
