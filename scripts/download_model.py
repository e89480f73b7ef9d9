"""Rule download_model: a hub repository or a local folder into data/models/{model}/."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from shadowft.hub import fetch_model
from shadowft.io import raise_on_sigterm

raise_on_sigterm()

fetch_model(snakemake.params.source, Path(snakemake.output[0]))
