"""Rule report: results/summary.csv (tidy), summary.md and summary.html (the paper-style tables)."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from shadowft.report import summarize
from shadowft.versions import EnvironmentVersions

summarize(
    snakemake.params.records,
    Path(snakemake.output.csv),
    Path(snakemake.output.md),
    out_html=Path(snakemake.output.html),
    benchmark_groups=snakemake.params.benchmark_groups,
    similarity=snakemake.params.similarity,
    versions=[EnvironmentVersions.read(Path(path)) for path in snakemake.input.versions],
)
