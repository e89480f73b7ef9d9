"""Rule check_pair: base and instruct share an architecture and a tensor layout, and every weight file is whole."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from shadowft.preflight import write_pair_check

write_pair_check(
    Path(snakemake.input.base),
    Path(snakemake.input.instruct),
    Path(snakemake.output[0]),
    vocab_mismatch=snakemake.params.vocab_mismatch,
    allow_pickle=snakemake.params.allow_pickle,
)
