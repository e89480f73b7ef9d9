"""The workflow's plan and job sizes, called directly as the rules call them (no Snakemake)."""

import json
import re
from types import SimpleNamespace

import pytest
import yaml
from conftest import ROOT
from model_fixtures import write_sparse_model

from shadowft.demo import build as demo
from shadowft.evaluation.spec import BenchmarkSpec
from shadowft.training.resources import Node, Workload, size_job
from shadowft.workflow.config import validate_config
from shadowft.workflow.plan import Plan, parse_scores_path, scores_path
from shadowft.workflow.sizing import Sizer
from shadowft.workflow.sweep import Variant


class Wildcards(SimpleNamespace):
    """A job's wildcards as Snakemake hands them over: attributes, and their items."""

    def items(self):
        return vars(self).items()


class Paths(list):
    """A rule's input as Snakemake hands it to a resource function: a list with named items."""

    def __init__(self, **named):
        super().__init__(named.values())
        self.__dict__.update(named)


def demo_config(**changes):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    for key, value in changes.items():
        config[key] = {**config[key], **value}
    return validate_config(config, demo_datasets=demo.DATASETS)


@pytest.fixture
def plan():
    return Plan(demo_config(), basedir="/checkout")


def test_models_and_datasets_are_found_where_their_rules_write_them(plan):
    lora = next(iter(plan.runs))
    assert plan.base_model_dir(Wildcards(pair="demo")) == "data/demo/base/model"
    assert plan.instruct_model_dir(Wildcards(pair="demo")) == "data/demo/instruct/model"
    for name in demo.DATASETS:
        assert plan.dataset_dir(name) == f"data/demo/{name}"
    job = Wildcards(pair="demo", run=lora, role="base")
    assert plan.training_dataset_dir(job) == "data/demo/demo_task"
    assert plan.tuned_model(job) == f"results/demo/{lora}/train_base/model"
    assert plan.tuned_model_flag(job) == "--adapter"


def test_each_variant_is_scored_on_the_model_that_makes_it(plan):
    lora, full = plan.runs
    cases = {
        "base": "data/demo/base/model",
        "instruct": "data/demo/instruct/model",
        f"{lora}/instruct_ft": f"results/demo/{lora}/train_instruct/merged",
        f"{full}/instruct_ft": f"results/demo/{full}/train_instruct/model",
        f"{full}/base_ft": f"results/demo/{full}/train_base/model",
        f"{lora}/shadow_a0.5": f"results/demo/{lora}/shadow_a0.5",
    }
    for variant, model in cases.items():
        assert plan.variant_model_dir(Wildcards(pair="demo", variant=variant)) == model


def test_wildcard_constraints_match_exactly_the_plans_values(plan):
    constraints = plan.wildcard_constraints()
    lora = next(iter(plan.runs))
    assert re.fullmatch(constraints["variant"], f"{lora}/shadow_a0.25")
    assert not re.fullmatch(constraints["variant"], f"{lora}/shadow_a0.3")
    assert not re.fullmatch(constraints["run"], lora + "x")
    assert re.fullmatch(constraints["alpha"], "1") and not re.fullmatch(constraints["alpha"], "1.0")
    assert re.fullmatch(constraints["model"], "anything") is None, "the demo downloads no model"


def test_a_runs_training_parameters_are_the_configs_layers_over_the_papers(plan):
    lora = next(iter(plan.runs))
    parameters = plan.training_parameters(Wildcards(pair="demo", run=lora, role="instruct"))
    assert parameters["model_dir"] == "data/demo/instruct/model"
    assert parameters["output_dir"] == f"results/demo/{lora}/train_instruct/work"
    assert (parameters["tuning"], parameters["stage"], parameters["lora_rank"]) == ("lora", "sft", 8)
    assert parameters["overrides"]["cutoff_len"] == 128 and list(parameters["overrides"]) == sorted(
        parameters["overrides"]
    )
    assert json.loads(plan.training_spec(Wildcards(pair="demo", run=lora, role="instruct"))) == parameters


def test_a_custom_benchmark_reaches_the_evaluation_typed(plan):
    spec = BenchmarkSpec.from_mapping(json.loads(plan.benchmark_json(Wildcards(benchmark="demo_task"))))
    assert spec == BenchmarkSpec(
        "demo_task",
        "custom",
        24,
        "data/demo/demo_task/eval.jsonl",
        "exact_match",
        "{question}",
        partial_credit="token_accuracy",
    ), "the report's keys (description, role) stay out of the evaluation's spec"


def test_scores_paths_are_parsed_back_wherever_the_results_lie(plan):
    for variant in plan.variants:
        path = "/runs/seed1/" + scores_path("demo", variant.name, "demo_chat")
        assert parse_scores_path(path) == ("demo", variant, "demo_chat")
    assert len(plan.score_files()) == len(plan.variants) * len(plan.benchmarks)
    with pytest.raises(ValueError, match="not a scores file"):
        parse_scores_path("results/demo/eval/demo_chat/scores.csv")


def test_the_learning_rate_figure_is_planned_only_where_a_setting_sweeps_it():
    one_rate = Plan(demo_config())
    assert not one_rate.sweeps_learning_rate()
    assert "results/plots/demo/learning_rate.png" not in one_rate.final_outputs()
    swept = Plan(demo_config(training={"learning_rates": {"lora": [1e-3, 3e-3], "full": [1e-3]}}))
    assert swept.sweeps_learning_rate()
    assert "results/plots/demo/learning_rate.png" in swept.final_outputs()
    untuned = Plan(
        demo_config(
            training={"learning_rates": {"lora": [1e-3, 3e-3], "full": [1e-3]}},
            evaluation={"variants": ["base", "instruct"]},
        )
    )
    assert "results/plots/demo/learning_rate.png" not in untuned.final_outputs()


def test_each_run_that_tunes_base_measures_its_overlap(plan):
    lora, full = plan.runs
    assert plan.overlap_files() == [f"results/demo/{lora}/overlap.csv", f"results/demo/{full}/overlap.csv"]
    assert "results/plots/demo/overlap.png" in plan.final_outputs()
    job = Wildcards(pair="demo", run=lora)
    assert plan.overlap_inputs(job) == {
        "base": "data/demo/base/model",
        "instruct": "data/demo/instruct/model",
        "tuned": f"results/demo/{lora}/train_base/model",
        "instruct_tuned": f"results/demo/{lora}/train_instruct/model",
    }
    assert plan.overlap_updates(job) == (
        f"--adapter results/demo/{lora}/train_base/model --instruct-adapter results/demo/{lora}/train_instruct/model"
    )
    assert plan.overlap_updates(Wildcards(pair="demo", run=full)).startswith("--tuned results/")
    grafts_only = Plan(demo_config(evaluation={"variants": ["instruct", "shadow"]}))
    assert "instruct_tuned" not in grafts_only.overlap_inputs(job) and "--instruct" not in grafts_only.overlap_updates(
        job
    )
    untuned = Plan(demo_config(evaluation={"variants": ["base", "instruct", "instruct_ft"]}))
    assert untuned.overlap_files() == [] and "results/plots/demo/overlap.png" not in untuned.final_outputs()


def test_remote_code_is_allowed_only_where_a_model_entry_says_so():
    config = demo_config()
    config["models"]["demo-base"]["trust_remote_code"] = True
    plan = Plan(config)
    lora = next(iter(plan.runs))
    assert plan.remote_code_roles() == ["demo:base"]
    assert plan.remote_code_flag(Wildcards(pair="demo", run=lora, role="base")) == "--trust-remote-code"
    assert plan.remote_code_flag(Wildcards(pair="demo", variant="instruct")) == ""
    assert Variant.parse(f"{lora}/shadow_a1").roles_run == ("base", "instruct"), "a graft carries base's training"


def test_environments_are_the_checkouts_virtualenvs_or_conda(plan):
    assert plan.python("train") == "/checkout/.venvs/train/bin/python"
    assert Plan(demo_config(), conda=True).python("train") == "python"
    assert plan.report_environments() == ["core", "train", "eval"]


NODE = Node(gpus=4, cpus=32, mem_mb=256_000, gpu_mem_mb=81_920, max_nodes=2)


def sizer(plan):
    return Sizer(plan, NODE, node_described=True, unknown="TBD")


def test_each_workload_states_the_resources_it_uses(plan):
    sizes = sizer(plan)
    assert set(sizes.job(Workload.ENGINE, model="base")) == {"mem_mb", "runtime"}
    assert set(sizes.job(Workload.EVALUATE, model="model")) == {"mem_mb", "runtime", "gpu", "cpus_per_gpu"}
    training = sizes.job(sizes.training_workload, model="model", tokens=sizes.training_tokens)
    assert set(training) == {"mem_mb", "runtime", "gpu", "cpus_per_gpu", "nodes", "mpi", "tasks_per_node", "gres"}
    assert training["cpus_per_gpu"] == 8
    assert (sizes.tool_threads, sizes.engine_threads) == (8, 4)


def test_a_job_is_sized_from_its_model_once_it_exists(plan, tmp_path):
    sizes = sizer(plan)
    evaluation = sizes.job(Workload.EVALUATE, model="model")
    job = Wildcards(pair="demo", variant="base", benchmark="demo_task")
    absent = Paths(model=str(tmp_path / "absent"), data=str(tmp_path))
    # Before the download, neither the model nor the pair's base exists and the pair declares no size.
    assert evaluation["gpu"](job, absent, 1, "evaluate") == "TBD"
    assert evaluation["mem_mb"](job, absent, 1, "evaluate") == "TBD"
    model = write_sparse_model(tmp_path / "model", 8_000_000_000, shards=1)
    present = Paths(model=str(model), data=str(tmp_path))
    expected = size_job(Workload.EVALUATE, 8_000_000_000, NODE, attempt=2)
    assert evaluation["gpu"](job, present, 2, "evaluate") == expected.gpu
    assert evaluation["mem_mb"](job, present, 2, "evaluate") == expected.mem_mb


def test_a_pairs_declared_size_stands_in_before_the_download(tmp_path):
    config = demo_config()
    config["pairs"]["demo"]["parameters"] = 14_000_000_000
    plan = Plan(config)
    sizes = sizer(plan)
    lora, full = plan.runs
    training = sizes.job(sizes.training_workload, model="model", tokens=sizes.training_tokens)
    inputs = Paths(model=str(tmp_path / "absent"), dataset=str(tmp_path / "absent"))
    job = Wildcards(pair="demo", run=full, role="base")
    expected = size_job(Workload.TRAIN_FULL, 14_000_000_000, NODE)
    sized = {key: training[key](job, inputs, 1, "train") for key in ("gpu", "nodes", "mpi")}
    assert sized == {"gpu": expected.gpu, "nodes": expected.nodes, "mpi": "srun" if expected.nodes > 1 else None}
    assert training["gpu"](Wildcards(pair="demo", run=lora, role="base"), inputs, 1, "train") == 1


def test_a_spread_the_profile_asks_for_is_what_the_job_is_sized_for(tmp_path):
    config = demo_config()
    config["pairs"]["demo"]["parameters"] = 500_000_000
    plan = Plan(config)
    # set-resources: {train: {gpu: 2, nodes: 2}}; demo_train (`use rule train`) keeps its own size.
    sizes = Sizer(plan, NODE, node_described=True, unknown="TBD", requested={"train": {"gpu": 2, "nodes": 2}})
    training = sizes.job(sizes.training_workload, model="model", tokens=sizes.training_tokens)
    lora, _ = plan.runs
    job = Wildcards(pair="demo", run=lora, role="base")
    inputs = Paths(model=str(tmp_path / "absent"), dataset=str(tmp_path / "absent"))
    spread = {key: value(job, inputs, 1, "train") for key, value in training.items() if callable(value)}
    expected = size_job(Workload.TRAIN_LORA, 500_000_000, NODE, gpu=2, nodes=2)
    # One GPU on each node: the executor's mpi job asks for two tasks a node (it refuses one),
    # and --gres asks SLURM for one GPU on every node, which --gpus=2 alone would not.
    assert spread == {
        "gpu": 2,
        "nodes": 2,
        "mem_mb": expected.mem_mb,
        "runtime": expected.runtime,
        "mpi": "srun",
        "tasks_per_node": 2,
        "gres": "gpu:1",
    }
    assert {key: training[key](job, inputs, 1, "demo_train") for key in ("gpu", "nodes", "mpi", "gres")} == {
        "gpu": 1,
        "nodes": 1,
        "mpi": None,
        "gres": None,
    }
