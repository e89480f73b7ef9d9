# Helpers shared by the rules: every function is named for what it returns.
import inspect
import json
import re

from functools import lru_cache

from snakemake.common import get_function_params, overwrite_function_params
from snakemake.common.tbdstring import TBDString
from snakemake_interface_executor_plugins.settings import DeploymentMethod

from shadowft import demo
from shadowft.benchmarks import benchmark_groups as catalog_benchmark_groups
from shadowft.benchmarks import opencompass_benchmarks
from shadowft.llamafactory import PAPER_DEFAULTS
from shadowft.opencompass import BACKEND_ENVS, max_out_len_of
from shadowft.report import pairs_sweeping_learning_rate
from shadowft.resources import (
    ENGINE_THREADS,
    NODE_RESOURCE_KEYS,
    Workload,
    count_parameters,
    dataset_tokens,
    local_node,
    node_from_resources,
    size_job,
)
from shadowft.runs import Variant, VariantKind, alpha_label, runs, variants
from shadowft.versions import EnvironmentVersions, checkout_commit, versions_sentence

PAIRS = sorted(config["pairs"])
RUNS = {run.name: run for run in runs(config)}
# A pair's two models: BASE, whose update is grafted, and INSTRUCT, which receives it.
ROLES = ("base", "instruct")
ALPHAS = [alpha_label(alpha) for alpha in config["graft"]["alphas"]]
BENCHMARKS = sorted(config["evaluation"]["benchmarks"])


def alternatives(names):
    """A regex matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def downloaded_models():
    return [name for name, spec in config["models"].items() if spec["source"] != "demo"]


def prepared_datasets():
    """Datasets the workflow samples, checks and registers: from the hub, or a local file."""
    return [name for name, spec in config["datasets"].items() if spec["source"] == "hub" or "file" in spec]


wildcard_constraints:
    pair=alternatives(PAIRS),
    run=alternatives(RUNS),
    role=alternatives(ROLES),
    alpha=alternatives(ALPHAS),
    benchmark=alternatives(BENCHMARKS),
    model=alternatives(downloaded_models()),
    dataset=alternatives(prepared_datasets()),
    variant=f"base|instruct|({alternatives(RUNS)})/(instruct_ft|base_ft|shadow_a({alternatives(ALPHAS)}))",
    step="base|instruct",


def env_python(env):
    """The Python interpreter of a rule's environment: the conda env's under
    `--sdm conda`, else the virtualenv that envs/build_venvs.py built from the same file."""
    if DeploymentMethod.CONDA in workflow.deployment_settings.deployment_method:
        return "python"
    return os.path.join(workflow.basedir, ".venvs", env, "bin", "python")


def model_dir(name):
    """Where a model of `config["models"]` lives once it is available."""
    spec = config["models"][name]
    if spec["source"] == "demo":
        return f"data/demo/{spec['role']}/model"
    return f"data/models/{name}"


def dataset_dir(name):
    """Where a dataset of `config["datasets"]` lives: a LLaMA-Factory dataset folder."""
    spec = config["datasets"][name]
    if spec["source"] == "demo":
        return f"data/demo/{demo.DATASET_FOLDERS[name]}"
    if name in prepared_datasets():
        return f"data/datasets/{name}"
    return spec["path"]


def dataset_source(wildcards):
    return config["datasets"][wildcards.dataset]


def dataset_spec(wildcards):
    """A prepared dataset's config entry, as JSON for the command line."""
    return json.dumps(dataset_source(wildcards), sort_keys=True)


def dataset_rows_source(wildcards):
    """What prepare_dataset reads: the hub download's folder, or the local file."""
    spec = dataset_source(wildcards)
    return f"data/downloads/{wildcards.dataset}" if spec["source"] == "hub" else spec["file"]


def model_source(wildcards):
    return config["models"][wildcards.model]


def pair_model_dir(pair, role):
    return model_dir(config["pairs"][pair][role])


def pair_template(wildcards):
    return config["pairs"][wildcards.pair]["template"]


def base_model_dir(wildcards):
    return pair_model_dir(wildcards.pair, "base")


def instruct_model_dir(wildcards):
    return pair_model_dir(wildcards.pair, "instruct")


def model_trusts_remote_code(name):
    """Whether a model of `config["models"]` may run its own Python code: its entry says so
    (a family file fills it in); the one value its download, training, export and evaluation use."""
    return bool(config["models"][name].get("trust_remote_code", False))


def role_trusts_remote_code(pair, role):
    return model_trusts_remote_code(config["pairs"][pair][role])


def scored_role(variant):
    """The role whose model an evaluation of `variant` loads: base for base and base_ft, else
    instruct (a graft is instruct's model)."""
    return "base" if variant.kind in (VariantKind.BASE, VariantKind.BASE_FT) else "instruct"


def trust_remote_code_flag(wildcards):
    """`--trust-remote-code` for a job on a model that may run its own code, else nothing: the
    trained model (train, merge_adapter) or, for an evaluation, the model the variant comes from."""
    if "variant" in wildcards.keys():
        role = scored_role(parsed_variant(wildcards.variant))
    else:
        role = wildcards.role
    return "--trust-remote-code" if role_trusts_remote_code(wildcards.pair, role) else ""


def variant_trusts_remote_code(pair, variant):
    """Whether a job that made or scored `variant` ran a model's own code, for the report's mark:
    its evaluation (the role trust_remote_code_flag names), and for a graft also the training of
    base, whose update it carries."""
    roles = {scored_role(variant), *(["base"] if variant.kind is VariantKind.SHADOW else [])}
    return any(role_trusts_remote_code(pair, role) for role in roles)


def pair_chat_template_kwargs(wildcards):
    """The arguments the pair's chat template is rendered with in evaluation, as JSON."""
    return json.dumps(config["pairs"][wildcards.pair]["chat_template_kwargs"], sort_keys=True)


def pair_allows_pickle(wildcards):
    """Whether either model of the pair was configured to accept pickle weights."""
    pair = config["pairs"][wildcards.pair]
    return any(config["models"][pair[role]].get("allow_pickle", False) for role in ("base", "instruct"))


def trained_model_dir(wildcards):
    """The model a training run starts from: the pair's base or instruct model."""
    return pair_model_dir(wildcards.pair, wildcards.role)


def lora_run_names():
    """The runs that train a LoRA adapter (merged into its model for evaluation)."""
    return [name for name, run in RUNS.items() if run.tuning == "lora"]


def run_of(wildcards):
    """The run a job belongs to, from its `run` wildcard (shadowft.runs names it)."""
    return RUNS[wildcards.run]


def run_tuning(wildcards):
    return run_of(wildcards).tuning


def training_dataset_name(wildcards):
    """SFT trains on training.dataset, DPO on training.preference_dataset."""
    if run_of(wildcards).stage == "dpo":
        return config["training"]["preference_dataset"]
    return config["training"]["dataset"]


def training_dataset_dir(wildcards):
    return dataset_dir(training_dataset_name(wildcards))


def training_overrides(pair, run):
    """The LLaMA-Factory arguments of one run over the paper's defaults: the experiment's (common,
    the stage's, then the tuning's), then the pair's own (a family's, with its family_overrides).
    Sorted: the run's parameters (and Snakemake's params trigger) do not depend on the config's key order."""
    overrides = {}
    for hyperparameters in (config["training"]["hyperparameters"], config["pairs"][pair]["hyperparameters"]):
        for section in ("common", run.stage, run.tuning):
            overrides.update(hyperparameters.get(section, {}))
    return dict(sorted(overrides.items()))


def training_parameters(wildcards):
    """The ingredients of one fine-tuning run's LLaMA-Factory arguments."""
    run = run_of(wildcards)
    return {
        "model_dir": trained_model_dir(wildcards),
        "dataset_dir": training_dataset_dir(wildcards),
        "dataset": training_dataset_name(wildcards),
        "template": pair_template(wildcards),
        "tuning": run.tuning,
        "stage": run.stage,
        "output_dir": f"results/{wildcards.pair}/{wildcards.run}/train_{wildcards.role}/work",
        "overrides": training_overrides(wildcards.pair, run),
        "seed": run.seed,
        "learning_rate": run.learning_rate,
        "lora_rank": run.lora_rank,
        "trust_remote_code": role_trusts_remote_code(wildcards.pair, wildcards.role),
    }


def training_spec(wildcards):
    """training_parameters as JSON, for the command that writes the run's checked YAML."""
    return json.dumps(training_parameters(wildcards), sort_keys=True)


def demo_step_model_dir(wildcards):
    """The demo base is pre-trained from random weights; the demo instruct is tuned from base."""
    return "data/demo/init" if wildcards.step == "base" else "data/demo/base/model"


def demo_step_name(wildcards):
    """shadowft's name of the step that makes the demo's base (pre-training) or instruct model."""
    return "pretrain" if wildcards.step == "base" else "instruct"


def demo_step_dataset_dir(wildcards):
    """Base is pre-trained on the corpus, instruct tuned on the chat set."""
    return "data/demo/pretrain" if wildcards.step == "base" else "data/demo/chat"


def demo_step_paths(wildcards):
    """Where a demo-building step reads and writes, and its seed; the step's recipe is shadowft's."""
    return {
        "model_dir": demo_step_model_dir(wildcards),
        "dataset_dir": demo_step_dataset_dir(wildcards),
        "output_dir": f"data/demo/{wildcards.step}/work",
        "seed": config["seed"],
    }


def delta_source(wildcards):
    """What extract_delta reads: the adapter (LoRA) or the tuned weights (full) of base."""
    return f"results/{wildcards.pair}/{wildcards.run}/train_base/model"


@lru_cache(maxsize=None)
def parsed_variant(name):
    """The variant a `variant` wildcard names (shadowft.runs), parsed once per name."""
    return Variant.parse(name)


def variant_model_dir(wildcards):
    """The model folder scored as `variant` of a pair."""
    pair, variant = wildcards.pair, parsed_variant(wildcards.variant)
    if variant.run is None:
        return pair_model_dir(pair, variant.kind.value)
    if variant.kind is VariantKind.SHADOW:
        return f"results/{pair}/{wildcards.variant}"
    role = "instruct" if variant.kind is VariantKind.INSTRUCT_FT else "base"
    # A LoRA run's adapter is scored merged into the model it was trained on.
    folder = "merged" if variant.run.tuning == "lora" else "model"
    return f"results/{pair}/{variant.run.name}/train_{role}/{folder}"


def benchmark_dataset_dir(wildcards):
    return dataset_dir(config["evaluation"]["benchmarks"][wildcards.benchmark]["dataset"])


def benchmark_data(wildcards):
    """What an evaluation reads besides the model: a custom benchmark's dataset folder, or the
    manifest of the prefetched standard benchmarks' data."""
    if config["evaluation"]["benchmarks"][wildcards.benchmark]["kind"] == "opencompass":
        return prefetch_manifest(wildcards.benchmark)
    return benchmark_dataset_dir(wildcards)


def benchmark_spec(wildcards):
    """The benchmark as shadowft.opencompass reads it, as JSON for the command line."""
    benchmark = {
        key: value for key, value in config["evaluation"]["benchmarks"][wildcards.benchmark].items() if key != "dataset"
    }
    benchmark["name"] = wildcards.benchmark
    if benchmark["kind"] == "custom":
        benchmark["path"] = os.path.join(benchmark_dataset_dir(wildcards), "eval.jsonl")
    return json.dumps(benchmark, sort_keys=True)


def evaluation_env():
    """The environment of the evaluation rules: the one holding the configured backend."""
    return BACKEND_ENVS[config["evaluation"]["backend"]]


def data_cache():
    """COMPASS_DATA_CACHE: where prefetch_benchmarks puts the standard benchmarks' data."""
    return config["evaluation"]["data_cache"]


def prefetch_manifest(benchmark):
    """The record of one standard benchmark's prefetched data: one per benchmark, so adding a
    benchmark leaves the others' evaluations alone."""
    return os.path.join(data_cache(), "manifests", f"{benchmark}.json")


def manifest_cache(wildcards, output):
    """The data cache a prefetch fills: the folder above its manifests/."""
    return os.path.dirname(os.path.dirname(output[0]))


def prefetched_benchmark(wildcards):
    """{name: spec} of the standard benchmark to prefetch, as JSON for the command line."""
    name = wildcards.benchmark
    return json.dumps({name: opencompass_benchmarks(config["evaluation"])[name]}, sort_keys=True)


def dataset_urls():
    """The config's downloads that come before OpenCompass's own (DATASETS_URL's format), as JSON."""
    return json.dumps(config["evaluation"]["dataset_urls"], sort_keys=True)


def benchmark_groups():
    """{group: [benchmark, ...]} of the evaluated standard benchmarks, for the report's group averages."""
    return catalog_benchmark_groups(config["evaluation"])


def score_records():
    """One record per score file, for the report: its pair, variant, the variant's sweep
    dimensions (shadowft.runs; None where one does not apply), whether its models ran their own
    code, benchmark and path."""
    return [
        {
            "pair": pair,
            "variant": variant.name,
            **variant.dimensions(),
            "trust_remote_code": variant_trusts_remote_code(pair, variant),
            "benchmark": benchmark,
            "scores": f"results/{pair}/eval/{variant.name}/{benchmark}/scores.csv",
        }
        for pair in PAIRS
        for variant in variants(config)
        for benchmark in BENCHMARKS
    ]


def score_files():
    return [record["scores"] for record in score_records()]


def report_environments():
    """The environments whose tools the report states: the workflow's own (Snakemake, the engine,
    the report), training's, and the evaluation backend's."""
    return list(dict.fromkeys(["core", "train", evaluation_env()]))


def environment_versions_files():
    return [f"results/versions/{environment}.json" for environment in report_environments()]


def environment_file(wildcards):
    """An environment's definition, envs/NAME.yaml: when it changes, its versions are recorded again."""
    return os.path.join(workflow.basedir, "envs", f"{wildcards.environment}.yaml")


def environment_python(wildcards):
    return env_python(wildcards.environment)


@lru_cache(maxsize=1)
def shadowft_commit():
    """shadowft's git commit ("-dirty" with uncommitted changes, "unknown" without git), found once
    where Snakemake runs; a new commit records every environment's versions again."""
    return checkout_commit(workflow.basedir)


def recorded_versions(wildcards, input):
    """The sentence stating the versions the report's environments recorded, for its captions
    (evaluated once the records exist; Snakemake leaves it undetermined before). A record that
    does not parse is said in the caption rather than stopping the plan: the report job reads
    the same records and fails on it."""
    try:
        return versions_sentence([EnvironmentVersions.read(path) for path in input.versions])
    except ValueError as error:
        return f"The versions could not be read: {error}"


def similarity_by_pair():
    return {pair: f"results/{pair}/similarity.csv" for pair in PAIRS}


def similarity_files():
    return list(similarity_by_pair().values())


def pair_trainer_states(wildcards):
    """{run: {role: the trainer's state of the tuned model}} of every run of the pair."""
    return {
        run: {role: f"results/{wildcards.pair}/{run}/train_{role}/model/trainer_state.json" for role in ROLES}
        for run in RUNS
    }


def pair_trained_models(wildcards):
    """Every tuned model (or adapter) folder of the pair: what the training figure reads."""
    return [f"results/{wildcards.pair}/{run}/train_{role}/model" for run in RUNS for role in ROLES]


def pair_figures(pair):
    """The report's figures of one pair (the learning-rate figure only where a setting ran several)."""
    figures = [f"results/plots/{pair}/{name}.png" for name in ("scores", "similarity", "training")]
    if "shadow" in config["evaluation"]["variants"]:
        figures.append(f"results/plots/{pair}/alpha.png")
    if pair in pairs_sweeping_learning_rate(score_records()):
        figures.append(f"results/plots/{pair}/learning_rate.png")
    return figures


def final_outputs():
    """Everything the report is made of: the tables and every pair's figures."""
    tables = ["results/summary.csv", "results/summary.md", "results/summary.html"]
    return tables + [figure for pair in PAIRS for figure in pair_figures(pair)]


# Job sizes. The node the jobs run on is what the profile's default-resources describe
# (node_gpus, node_cpus, ...: profiles/slurm/), or this machine when they say nothing.
# Each sized resource is computed from the parameter count of the job's model, read from
# its checkpoint; while that model does not exist yet (a dry run before the download)
# the value is Snakemake's <TBD>, and the scheduler computes it once the input is there.
@lru_cache(maxsize=1)
def cluster_node():
    """The node jobs are sized for: the profile's description, else this machine."""
    defaults = workflow.resource_settings.default_resources
    described = {}
    if defaults is not None:
        described = {key: defaults[key].value for key in NODE_RESOURCE_KEYS if key in defaults}
    return node_from_resources(described) or local_node()


def profile_describes_node():
    defaults = workflow.resource_settings.default_resources
    return defaults is not None and any(key in defaults for key in NODE_RESOURCE_KEYS)


def tool_threads():
    """Threads of a training or evaluation job: one GPU's share of a cluster node's CPUs.

    Locally, one: on a laptop these jobs are the demo's, mostly start-up and small matrices,
    where two one-thread jobs side by side beat one two-thread job (measured on 2 cores).
    """
    node = cluster_node()
    if not profile_describes_node():
        return 1
    return node.cpus_per_gpu if node.gpus else node.cpus


def engine_threads():
    """Threads of the delta engine's jobs (extract, graft, similarity)."""
    return min(ENGINE_THREADS, cluster_node().cpus)


@lru_cache(maxsize=None)
def _parameters_of(folder, modified):
    return count_parameters(Path(folder))


def parameters_of(folder):
    """The parameter count of a model folder, or None while the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    return _parameters_of(str(folder.resolve()), folder.stat().st_mtime_ns)


def pair_planning_model(pair):
    """Where a pair's base model can be sized before it is downloaded: its local source folder."""
    name = config["pairs"][pair]["base"]
    spec = config["models"][name]
    if not os.path.isdir(model_dir(name)) and spec["source"] == "local":
        return spec["path"]
    return model_dir(name)


# The input that holds the model each sized rule works on.
SIZED_MODEL_INPUT = {
    "demo_train": "model",
    "train": "model",
    "merge_adapter": "model",
    "evaluate": "model",
    "extract_delta": "base",
    "graft": "instruct",
    "similarity": "base",
}


def job_workload(rulename, wildcards):
    if rulename == "train":
        run = run_of(wildcards)
        return Workload.training(run.tuning, run.stage)
    return {
        "demo_train": Workload.TRAIN_FULL,
        "merge_adapter": Workload.MERGE,
        "evaluate": Workload.EVALUATE,
    }.get(rulename, Workload.ENGINE)


def job_parameters(rulename, wildcards, input):
    """The size of a job's model: its own input, else (planning) the pair's base, the same
    architecture, else (before the download) the count the pair declares (a family's)."""
    own = parameters_of(input[SIZED_MODEL_INPUT[rulename]])
    if own is not None or "pair" not in wildcards.keys():
        return own
    planned = parameters_of(pair_planning_model(wildcards.pair))
    if planned is not None:
        return planned
    return config["pairs"][wildcards.pair].get("parameters")


def job_tokens(rulename, wildcards, input):
    """What a job processes, for its wall time: training data times epochs, or generated tokens."""
    if rulename in ("train", "demo_train"):
        epochs = 1.0
        if rulename == "train":
            overrides = training_parameters(wildcards)["overrides"]
            epochs = float(overrides.get("num_train_epochs", PAPER_DEFAULTS["num_train_epochs"]))
        return dataset_tokens(Path(input.dataset)) * epochs if os.path.isdir(input.dataset) else 0.0
    if rulename == "evaluate":
        spec = config["evaluation"]["benchmarks"][wildcards.benchmark]
        questions_file = Path(input.data) / "eval.jsonl"
        # A standard benchmark's size is not known before it is prefetched: assume 1,000 questions.
        questions = sum(1 for _ in open(questions_file)) if questions_file.is_file() else 1000
        return questions * max_out_len_of(spec)
    return 0.0


_JOB_SIZES = {}


def job_size(rulename, wildcards, input, attempt):
    """The JobResources of one job, or None while its model does not exist yet.

    Each sized resource of a job asks for its size: it is computed once per job, attempt and
    state of its inputs (a sweep's plan sizes thousands of jobs)."""
    key = (rulename, tuple(wildcards.items()), attempt, tuple(map(os.path.exists, input)))
    if key in _JOB_SIZES:
        return _JOB_SIZES[key]
    parameters = job_parameters(rulename, wildcards, input)
    if parameters is None:
        return None
    workload = job_workload(rulename, wildcards)
    tokens = job_tokens(rulename, wildcards, input)
    size = _JOB_SIZES[key] = size_job(workload, parameters, cluster_node(), attempt=attempt, tokens=tokens)
    return size


def sized_gpu(wildcards, input, attempt, rulename):
    """GPUs of a job in all, spread evenly over its nodes (0 for CPU work), from its model's size."""
    size = job_size(rulename, wildcards, input, attempt)
    return TBDString() if size is None else size.gpu


def sized_nodes(wildcards, input, attempt, rulename):
    size = job_size(rulename, wildcards, input, attempt)
    return TBDString() if size is None else size.nodes


def sized_mem_mb(wildcards, input, attempt, rulename):
    """Host memory per node, growing with the attempt."""
    size = job_size(rulename, wildcards, input, attempt)
    return TBDString() if size is None else size.mem_mb


def sized_runtime(wildcards, input, attempt, rulename):
    """Wall time in minutes, growing with the attempt."""
    size = job_size(rulename, wildcards, input, attempt)
    return TBDString() if size is None else size.runtime


def sized_mpi(wildcards, input, attempt, rulename):
    """Set for a job over several nodes: the SLURM executor then runs its command directly in
    the allocation (not inside a one-task job step), and the command starts one launcher per
    node with srun (shadowft.launch). Absent otherwise."""
    size = job_size(rulename, wildcards, input, attempt)
    return "srun" if size is not None and size.nodes > 1 else None


def sized_tasks_per_node(wildcards, input, attempt, rulename):
    """Tasks a multi-node job may start on each node: one per GPU (absent for one node)."""
    size = job_size(rulename, wildcards, input, attempt)
    return size.gpus_per_node if size is not None and size.nodes > 1 else None


# Snakemake reads an input function's signature at every call, which a sweep's plan makes
# thousands of times; record each helper's signature once, the way snakemake.ioutils does.
# Keep this at the end of the file: it covers the functions defined above it.
for _helper in [value for value in globals().values() if inspect.isfunction(value)]:
    if _helper.__code__.co_filename.endswith(os.path.join("rules", "common.smk")):
        overwrite_function_params(_helper, get_function_params(_helper))
