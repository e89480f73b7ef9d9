"""Rule extract_delta: the update learned on base, as a self-describing delta folder."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from shadowft.delta import extract_delta
from shadowft.io import raise_on_sigterm

raise_on_sigterm()

source = "adapter" if snakemake.params.tuning == "lora" else "tuned"
extract_delta(
    Path(snakemake.input.base),
    Path(snakemake.output[0]),
    **{source: Path(snakemake.input.tuned)},
    threads=snakemake.threads,
)
