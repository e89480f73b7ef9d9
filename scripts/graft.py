"""Rule graft: W_instruct + alpha * delta, written as a loadable Hugging Face model."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from shadowft.delta import graft
from shadowft.io import raise_on_sigterm

raise_on_sigterm()

graft(
    Path(snakemake.input.instruct),
    Path(snakemake.input.delta),
    Path(snakemake.output[0]),
    alpha=float(snakemake.params.alpha),
    preset=snakemake.params.preset,
    vocab_mismatch=snakemake.params.vocab_mismatch,
    threads=snakemake.threads,
)
