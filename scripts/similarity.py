"""Rule similarity: sigma = sum|W_B - W_I| / (sum|W_B| + sum|W_I|), per tensor, layer and overall."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from shadowft.io import raise_on_sigterm
from shadowft.similarity import similarity

raise_on_sigterm()

similarity(
    Path(snakemake.input.base),
    Path(snakemake.input.instruct),
    Path(snakemake.output[0]),
    threads=snakemake.threads,
    progress=False,
)
