"""Rule report: results/summary.csv (tidy) and results/summary.md (the paper-style table)."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from shadowft.report import summarize

summarize(
    snakemake.params.records,
    Path(snakemake.output.csv),
    Path(snakemake.output.md),
    out_png=Path(snakemake.output.png),
    similarity=snakemake.params.similarity,
    seed=snakemake.params.seed,
    benchmark_groups=snakemake.params.benchmark_groups,
)
