"""Rule build_demo: the tiny random-init model, its tokenizer and the synthetic datasets."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from pathlib import Path

from shadowft.demo import build_demo
from shadowft.io import raise_on_sigterm

raise_on_sigterm()

build_demo(
    Path(snakemake.output.init),
    Path(snakemake.output.pretrain),
    Path(snakemake.output.chat),
    Path(snakemake.output.task),
    seed=snakemake.params.seed,
)
