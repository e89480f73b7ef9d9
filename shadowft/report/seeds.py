"""How far the scores of one experiment run with several seeds lie apart, against the spread the questions alone give.

``python -m shadowft.report seeds SEED=RUN_DIR ...`` prints the table (README's demo table is made so).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from shadowft.evaluation.spec import CUSTOM_METRICS
from shadowft.report.tables import variant_name_label


def seed_spread(summaries: Mapping[int, Path]):
    """Scores of the same experiment run with several seeds, and how far they move.

    `summaries` maps each seed to the `results/summary.csv` of its run. Returns a frame with
    one row per (pair, variant label, benchmark) in the first run's (report) order, a column
    per seed, then ``mean``, ``min``, ``max``, ``spread`` (max - min), ``sd`` (over the seeds)
    and ``sampling sd``: how far a score moves with the questions drawn alone, sqrt(p (1 - p) / n)
    in points for a score of p on n questions, its variance averaged over the seeds. The demo
    draws its held-out questions from the seed, so an ``sd`` many times the sampling sd comes
    from the models, not from the questions. The sampling sd is known for a benchmark of one
    dataset scored by a custom metric (exact match: the percentage of questions answered
    right), NaN otherwise. Variants are matched by their report label, which leaves the seed
    out of the run's name (``sft-lora-lr3e-3-r8-s0`` and ``...-s1`` are one row). Every run must
    hold the same scores.
    """
    if len(summaries) < 2:
        raise ValueError("seed_spread: give at least two runs")
    keys = ["pair", "variant", "benchmark"]
    columns, variances = {}, {}
    for seed, path in summaries.items():
        summary = pd.read_csv(path)
        summary["variant"] = summary["variant"].map(variant_name_label)
        if (summary.groupby(["pair", "variant", "benchmark", "dataset", "metric"])["score"].size() > 1).any():
            raise ValueError(f"seed_spread: {path} holds two runs of one label (a sweep); compare one run per seed")
        grouped = summary.groupby(keys, sort=False)
        scores = grouped["score"].mean()
        if columns and set(scores.index) != set(next(iter(columns.values())).index):
            raise ValueError(f"seed_spread: {path} (seed {seed}) does not hold the same variants and benchmarks")
        columns[seed] = scores
        share = summary["score"] / 100
        summary["variance"] = (share * (1 - share) / summary["num_examples"]).where(
            summary["metric"].isin(CUSTOM_METRICS)
        )
        variances[seed] = summary.groupby(keys, sort=False)["variance"].mean().where(grouped.size() == 1)
    per_seed = pd.DataFrame(columns)
    sampling_sd = 100 * pd.DataFrame(variances).reindex(per_seed.index).mean(axis=1, skipna=False) ** 0.5
    return per_seed.assign(
        mean=per_seed.mean(axis=1),
        min=per_seed.min(axis=1),
        max=per_seed.max(axis=1),
        spread=per_seed.max(axis=1) - per_seed.min(axis=1),
        sd=per_seed.std(axis=1),
        **{"sampling sd": sampling_sd},
    )


def render_seed_spread(table, *, digits: int = 1) -> str:
    """`seed_spread`'s table as Markdown ("-" where a value is not known)."""
    header = ["Pair", "Variant", "Benchmark", *(f"seed {c}" if isinstance(c, int) else str(c) for c in table.columns)]
    lines = ["| " + " | ".join(header) + " |", "| :-- | :-- | :-- | " + " | ".join("--:" for _ in table.columns) + " |"]
    for (pair, variant, benchmark), row in table.iterrows():
        cells = ["-" if pd.isna(value) else f"{value:.{digits}f}" for value in row]
        lines.append("| " + " | ".join([pair, variant, benchmark, *cells]) + " |")
    return "\n".join(lines) + "\n"
