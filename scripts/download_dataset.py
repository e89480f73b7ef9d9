"""Rule download_dataset: a hub dataset's data files into data/downloads/{dataset}/."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from shadowft.hub import fetch_dataset
from shadowft.io import raise_on_sigterm

raise_on_sigterm()

fetch_dataset(snakemake.params.source, Path(snakemake.output[0]))
