# Helpers shared by the rules: every function is named for what it returns.
import json
import re

from snakemake_interface_executor_plugins.settings import DeploymentMethod

from shadowft.config import alpha_label, variants


PAIRS = sorted(config["pairs"])
TUNINGS = config["training"]["tunings"]
ALPHAS = [alpha_label(alpha) for alpha in config["graft"]["alphas"]]
BENCHMARKS = sorted(config["evaluation"]["benchmarks"])


def alternatives(names):
    """A regex matching exactly these names (and nothing when there are none)."""
    return "|".join(re.escape(name) for name in names) or "(?!)"


def downloaded_models():
    return [name for name, spec in config["models"].items() if spec["source"] != "demo"]


wildcard_constraints:
    pair=alternatives(PAIRS),
    tuning=alternatives(TUNINGS),
    role="base|instruct",
    alpha=alternatives(ALPHAS),
    benchmark=alternatives(BENCHMARKS),
    model=alternatives(downloaded_models()),
    variant=f"base|instruct|({alternatives(TUNINGS)})/(instruct_ft|base_ft|shadow_a({alternatives(ALPHAS)}))",
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
        return "data/demo/task"
    return spec["path"]


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


def trained_model_dir(wildcards):
    """The model a training run starts from: the pair's base or instruct model."""
    return pair_model_dir(wildcards.pair, wildcards.role)


def training_dataset_dir(wildcards):
    return dataset_dir(config["training"]["dataset"])


def training_parameters(wildcards):
    """The ingredients of one fine-tuning run's LLaMA-Factory arguments."""
    hyperparameters = config["training"]["hyperparameters"]
    return {
        "model_dir": trained_model_dir(wildcards),
        "dataset_dir": training_dataset_dir(wildcards),
        "dataset": config["training"]["dataset"],
        "template": pair_template(wildcards),
        "tuning": wildcards.tuning,
        "stage": "sft",
        "output_dir": f"results/{wildcards.pair}/{wildcards.tuning}/train_{wildcards.role}/work",
        "overrides": {**hyperparameters.get("common", {}), **hyperparameters.get(wildcards.tuning, {})},
    }


def demo_step_model_dir(wildcards):
    """The demo base is pre-trained from random weights; the demo instruct is tuned from base."""
    return "data/demo/init" if wildcards.step == "base" else "data/demo/base/model"


def demo_step_name(wildcards):
    """shadowft's name of the step that makes the demo's base (pre-training) or instruct model."""
    return "pretrain" if wildcards.step == "base" else "instruct"


def demo_step_paths(wildcards):
    """Where a demo-building step reads and writes; the step's recipe is shadowft's."""
    return {
        "model_dir": demo_step_model_dir(wildcards),
        "dataset_dir": "data/demo/pretrain",
        "output_dir": f"data/demo/{wildcards.step}/work",
    }


def delta_source(wildcards):
    """What extract_delta reads: the adapter (LoRA) or the tuned weights (full) of base."""
    return f"results/{wildcards.pair}/{wildcards.tuning}/train_base/model"


def variant_model_dir(wildcards):
    """The model folder scored as `variant` of a pair."""
    pair, variant = wildcards.pair, wildcards.variant
    if variant in ("base", "instruct"):
        return pair_model_dir(pair, variant)
    tuning, name = variant.split("/")
    if name == "instruct_ft":
        if tuning == "lora":
            return f"results/{pair}/lora/train_instruct/merged"
        return f"results/{pair}/full/train_instruct/model"
    if name == "base_ft":
        if tuning == "lora":
            return f"results/{pair}/lora/train_base/merged"
        return f"results/{pair}/full/train_base/model"
    return f"results/{pair}/{variant}"


def benchmark_dataset_dir(wildcards):
    return dataset_dir(config["evaluation"]["benchmarks"][wildcards.benchmark]["dataset"])


def benchmark_spec(wildcards):
    """The benchmark as shadowft.opencompass reads it, as JSON for the command line."""
    benchmark = {
        key: value
        for key, value in config["evaluation"]["benchmarks"][wildcards.benchmark].items()
        if key != "dataset"
    }
    benchmark["name"] = wildcards.benchmark
    benchmark["path"] = os.path.join(benchmark_dataset_dir(wildcards), "eval.jsonl")
    return json.dumps(benchmark, sort_keys=True)


def score_records():
    """Which pair and variant each score file belongs to, for the report."""
    return [
        {"pair": pair, "variant": variant, "scores": f"results/{pair}/eval/{variant}/{benchmark}/scores.csv"}
        for pair in PAIRS
        for variant in variants(config)
        for benchmark in BENCHMARKS
    ]


def score_files():
    return [record["scores"] for record in score_records()]


def similarity_by_pair():
    return {pair: f"results/{pair}/similarity.csv" for pair in PAIRS}


def similarity_files():
    return list(similarity_by_pair().values())


def final_outputs():
    return ["results/summary.csv", "results/summary.md", "results/plots/scores.png"]
