"""Rule training_config: LLaMA-Factory's YAML for one training run, generated from data."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from shadowft.llamafactory import training_arguments, write_yaml

write_yaml(training_arguments(**snakemake.params.training), snakemake.output[0])
