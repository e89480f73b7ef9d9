"""Rule training_figure: every run's training loss on BASE and INSTRUCT, from the trainer's state."""

import sys

sys.stderr = open(snakemake.log[0], "w")

import matplotlib

matplotlib.use("Agg")

from pathlib import Path

from shadowft.figures import plot_training_loss

plot_training_loss(
    {run: {role: Path(path) for role, path in states.items()} for run, states in snakemake.params.runs.items()},
    Path(snakemake.output.training),
    snakemake.wildcards.pair,
)
