# The adapters between Snakemake and the package: the plan of this experiment (every path and
# value a rule looks up, shadowft.workflow.plan), the job sizes (shadowft.workflow.sizing), and
# what only Snakemake knows: the deployment method, the profile's node, its <TBD> value.
from snakemake.common.tbdstring import TBDString
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from shadowft.training.resources import NODE_RESOURCE_KEYS, Workload, local_node, node_from_resources
from shadowft.versions import EnvironmentVersions, checkout_commit, versions_sentence
from shadowft.workflow.plan import Plan, alternatives
from shadowft.workflow.sizing import SPREAD_RESOURCES, Sizer

USES_CONDA = DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method
PLAN = Plan(config, basedir=workflow.basedir, conda=USES_CONDA)


def described_node():
    """{key: value} of the node_* keys the profile's default-resources give (empty: none)."""
    defaults = workflow.resource_settings.default_resources
    if defaults is None:
        return {}
    return {key: defaults[key].value for key in NODE_RESOURCE_KEYS if key in defaults}


def requested_spreads():
    """{rule: {resource: value}} of the GPUs and nodes the profile's set-resources ask for."""
    # (A line of the Snakefile may not start with the word `rule`: Snakemake reads a rule there.)
    overrides = workflow.resource_settings.overwrite_resources
    return {
        name: {key: getattr(resources[key], "value", resources[key]) for key in SPREAD_RESOURCES if key in resources}
        for name, resources in overrides.items()
    }


# The node jobs are sized for: the profile's description, else this machine.
SIZES = Sizer(
    PLAN,
    node_from_resources(described_node()) or local_node(),
    node_described=bool(described_node()),
    unknown=TBDString(),
    requested=requested_spreads(),
)


# The record of the check of the experiment's LLaMA-Factory names (rules/train.smk).
LLAMAFACTORY_CHECK = "results/checks/llamafactory.json"


wildcard_constraints:
    **PLAN.wildcard_constraints(),


# shadowft's git commit ("-dirty" with uncommitted changes), found once where Snakemake runs; a
# new commit records every environment's versions again.
COMMIT = checkout_commit(workflow.basedir)


def recorded_versions(wildcards, input):
    """The sentence stating the versions the report's environments recorded, for its captions
    (evaluated once the records exist; Snakemake leaves it undetermined before). A record that
    does not parse is said in the caption rather than stopping the plan: the report job reads
    the same records and fails on it."""
    try:
        return versions_sentence([EnvironmentVersions.read(path) for path in input.versions])
    except ValueError as error:
        return f"The versions could not be read: {error}"
