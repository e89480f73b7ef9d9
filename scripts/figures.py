"""Rules figures, alpha_figure and learning_rate_figure: the figures their outputs name, from summary.csv."""

import sys

sys.stderr = open(snakemake.log[0], "w")

import matplotlib

matplotlib.use("Agg")

from pathlib import Path

from shadowft.figures import draw_figures

draw_figures(
    Path(snakemake.input.summary),
    snakemake.wildcards.pair,
    {name: Path(path) for name, path in snakemake.output.items()},
    benchmark_groups=snakemake.params.benchmark_groups,
    similarity_csv=Path(snakemake.input.similarity) if "similarity" in snakemake.input.keys() else None,
)
