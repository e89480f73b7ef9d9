# Shadow-FT: fine-tune the BASE model, graft its weight update onto the INSTRUCT model,
# and compare the graft with instruct fine-tuned directly. See README.md.
import os
import sys

from snakemake.utils import min_version

min_version("9.0")

# The package holds the logic; every environment finds it in this checkout, so the
# code that runs is the code you read, whether the rule runs in a venv or a conda env.
sys.path.insert(0, workflow.basedir)
os.environ.update(PYTHONPATH=os.pathsep.join(filter(None, [workflow.basedir, os.environ.get("PYTHONPATH")])))

from shadowft.demo import DATASETS
from shadowft.workflow.config import validate_config
from shadowft.workflow.yamlfile import load_mapping

# The demo is the default experiment, found beside this Snakefile whatever the working
# directory; a `--configfile` replaces it rather than being merged into it (Snakemake would
# otherwise plan the demo's pair beside the given config's).
DEMO_CONFIG = os.path.join(workflow.basedir, "config", "config.yaml")
# Each config file read again for what Snakemake's own reading leaves out: the file and line
# of a YAML error (the demo's; Snakemake reads a --configfile before this runs), a key given twice.
for config_file in workflow.overwrite_configfiles or [DEMO_CONFIG]:
    load_mapping(config_file, "config file")
if not workflow.overwrite_configfiles:

    configfile: DEMO_CONFIG


CONFIG_FILES = ", ".join(map(str, workflow.overwrite_configfiles or [DEMO_CONFIG]))
validate_config(config, demo_datasets=DATASETS, source=CONFIG_FILES)


include: "rules/common.smk"
include: "rules/download.smk"
include: "rules/check.smk"
include: "rules/train.smk"
include: "rules/demo.smk"
include: "rules/delta.smk"
include: "rules/evaluate.smk"
include: "rules/report.smk"


# `snakemake --report results/report.html`: this description, then every output flagged report().
report: "report/workflow.rst"


rule all:
    default_target: True
    input:
        PLAN.final_outputs(),
