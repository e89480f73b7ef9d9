"""Rule demo_training_config: LLaMA-Factory's YAML for one step that makes the demo pair."""

import sys

sys.stderr = open(snakemake.log[0], "w")

from shadowft.llamafactory import demo_pair_arguments, write_yaml

write_yaml(demo_pair_arguments(snakemake.params.step, **snakemake.params.paths), snakemake.output[0])
