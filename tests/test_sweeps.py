"""Sweeps as the workflow plans them: every combination of the config's lists is a run with its
own folder, and adding a value to a list plans only the jobs of that value.

The models are sparse checkpoints (real headers, data a file hole) given as local models, so
the plan sizes every job without any model being built."""

import json
import re

import pytest
import yaml
from conftest import ROOT, snakemake
from model_fixtures import write_sparse_model
from test_slurm_plan import planned_resources
from test_workflow import planned_jobs

from shadowft.training.resources import Workload, node_from_resources, size_job
from shadowft.workflow.sweep import Run

PAIRS = ("p1", "p2")
LEARNING_RATES = {"lora": [1.0e-4, 2.0e-4, 5.0e-4], "full": [1.0e-5, 2.0e-5, 5.0e-5]}
ALPHAS = [0.5, 1.0, 1.5]
# The runs of that sweep, written out by hand: every dimension named, the rank for LoRA only.
RUNS = [
    "sft-lora-lr1e-4-r8-s0",
    "sft-lora-lr2e-4-r8-s0",
    "sft-lora-lr5e-4-r8-s0",
    "sft-full-lr1e-5-s0",
    "sft-full-lr2e-5-s0",
    "sft-full-lr5e-5-s0",
]
ALPHA_FOLDERS = ["shadow_a0.5", "shadow_a1", "shadow_a1.5"]
PROFILE = ROOT / "profiles" / "slurm"
MODEL_FILES = ("config.json", "model.safetensors.index.json", "model-00001-of-00001.safetensors")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A sparse model (both roles of both pairs) and a LLaMA-Factory dataset folder with held-out questions."""
    root = tmp_path_factory.mktemp("sweep")
    model = write_sparse_model(root / "model", 500_000_000, shards=1)
    data = root / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"sft": {"file_name": "train.json", "formatting": "sharegpt"}}))
    (data / "train.json").write_text("[]\n")
    (data / "eval.jsonl").write_text(json.dumps({"question": "q", "answer": "a"}) + "\n")
    return root, model, data


def sweep_config(inputs, alphas):
    """A complete config: two pairs, two tunings, three learning rates each, `alphas`."""
    root, model, data = inputs
    config = {
        "models": {
            f"{pair}-{role}": {"source": "local", "path": str(model)} for pair in PAIRS for role in ("base", "instruct")
        },
        "pairs": {pair: {"base": f"{pair}-base", "instruct": f"{pair}-instruct", "template": "qwen"} for pair in PAIRS},
        "datasets": {"sft": {"source": "local", "path": str(data)}},
        "training": {"dataset": "sft", "tunings": ["lora", "full"], "learning_rates": LEARNING_RATES},
        "graft": {"alphas": alphas},
        "evaluation": {"benchmarks": {"held_out": {"kind": "custom", "dataset": "sft"}}},
    }
    path = root / f"sweep-{len(alphas)}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def planned_outputs(dry_run_output):
    """(rule, [output paths]) of every job a dry run plans."""
    jobs = []
    for block in dry_run_output.split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        output = re.search(r"^\s+output: (.*)$", block, re.MULTILINE)
        if rule:
            jobs.append((rule.group(1), output.group(1).split(", ") if output else []))
    return jobs


def expected_jobs(alphas):
    """The job count of each rule for the sweep, per pair times two pairs."""
    runs, lora_runs = len(RUNS), len(LEARNING_RATES["lora"])
    per_pair = {
        "download_model": 2,  # base and instruct
        "check_pair": 1,
        "similarity": 1,
        "training_config": 2 * runs,  # each run on base and on instruct
        "train": 2 * runs,
        "merge_adapter": 2 * lora_runs,  # each tuned model's adapter merged, to score the baseline and base_ft
        "extract_delta": runs,
        "graft": runs * alphas,
        "evaluate": 2 + runs * (2 + alphas),  # base, instruct; per run instruct_ft, base_ft, the grafts (1 benchmark)
        "samples": 1,  # the benchmark's answers
        "figures": 1,  # scores and similarity
        "alpha_figure": 1,
        "learning_rate_figure": 1,  # three learning rates per tuning
        "training_figure": 1,
        "overlap": runs,
        "overlap_figure": 1,
    }
    return {
        **{rule: len(PAIRS) * count for rule, count in per_pair.items()},
        "check_llamafactory_names": 1,
        "report": 1,
        "environment_versions": 3,
        "all": 1,
    }


@pytest.mark.slow
def test_a_sweep_plans_every_combination_with_its_own_paths(inputs, tmp_path):
    output = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(sweep_config(inputs, ALPHAS))).stdout
    assert planned_jobs(output) == expected_jobs(len(ALPHAS))
    assert sum(expected_jobs(len(ALPHAS)).values()) == 210
    paths = [path for _, outputs in planned_outputs(output) for path in outputs]
    # all writes nothing; each evaluation three files (scores, predictions, hardware), the report five
    # (summary.csv, .md, .html, paired.csv, verdict.rst), each sample two, figures two per pair
    evaluations = expected_jobs(len(ALPHAS))["evaluate"]
    assert len(paths) == len(set(paths)) == 209 + 2 * evaluations + 4 + len(PAIRS) + 2
    for pair in PAIRS:
        for run in RUNS:
            assert f"results/{pair}/{run}/delta" in paths
            assert f"results/{pair}/{run}/overlap.csv" in paths
            assert f"results/{pair}/eval/{run}/instruct_ft/held_out/scores.csv" in paths
            for role in ("base", "instruct"):
                assert f"results/{pair}/{run}/train_{role}/model" in paths
            for folder in ALPHA_FOLDERS:
                assert f"results/{pair}/{run}/{folder}" in paths
                assert f"results/{pair}/eval/{run}/{folder}/held_out/scores.csv" in paths


def materialize(workdir, dry_run_output, model):
    """Every planned output made, in plan order: model-like folders hold the sparse model's files."""
    for _, outputs in planned_outputs(dry_run_output):
        for path in outputs:
            target = workdir / path
            if target.suffix in (".csv", ".yaml", ".md", ".png", ".json", ".html", ".rst"):
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("")
                continue
            target.mkdir(parents=True, exist_ok=True)
            for name in MODEL_FILES:
                (target / name).symlink_to(model / name)


def score_files(alpha_folders):
    """Every score file of the sweep with these graft folders: what the report reads."""
    variants = ["base", "instruct"] + [f"{run}/{kind}" for run in RUNS for kind in ["instruct_ft", *alpha_folders]]
    return [f"results/{pair}/eval/{variant}/held_out/scores.csv" for pair in PAIRS for variant in variants]


@pytest.mark.slow
def test_adding_an_alpha_plans_only_the_new_grafts_and_their_evaluations(inputs, tmp_path):
    first = sweep_config(inputs, ALPHAS)
    materialize(tmp_path, snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(first)).stdout, inputs[1])
    # Outputs newer than their inputs, in the DAG's order: the first sweep is finished.
    snakemake(tmp_path, "--touch", "--cores", "1", "--configfile", str(first))
    assert "Nothing to be done" in snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(first)).stdout

    # Touched outputs have no Snakemake metadata, from which a real run's report learns that its
    # inputs changed (tests/test_demo_run.py checks that on the demo): ask for the scores instead.
    second = sweep_config(inputs, [*ALPHAS, 2.0])
    targets = score_files([*ALPHA_FOLDERS, "shadow_a2"])
    output = snakemake(tmp_path, "-n", "--cores", "1", *targets, "--configfile", str(second)).stdout
    new_runs = len(PAIRS) * len(RUNS)
    assert planned_jobs(output) == {"graft": new_runs, "evaluate": new_runs}
    jobs = planned_outputs(output)
    assert {path for rule, outputs in jobs if rule == "graft" for path in outputs} == {
        f"results/{pair}/{run}/shadow_a2" for pair in PAIRS for run in RUNS
    }
    assert {path for rule, outputs in jobs if rule == "evaluate" for path in outputs if path.endswith(".csv")} == set(
        score_files(["shadow_a2"])
    ) - set(score_files([]))


@pytest.mark.slow
def test_dpo_jobs_are_sized_as_training_of_their_tuning_plus_a_reference_model(inputs, tmp_path):
    """The SLURM profile's plan of an SFT and a DPO run per tuning: each training job asks for its workload."""
    root, _, data = inputs
    config = yaml.safe_load(sweep_config(inputs, [1.0]).read_text())
    config["training"].update(stages=["sft", "dpo"], preference_dataset="sft")
    config["training"]["learning_rates"] = {"lora": [1.0e-4], "full": [1.0e-5]}
    configfile = root / "dpo-sizes.yaml"
    configfile.write_text(yaml.safe_dump(config))
    output = snakemake(tmp_path, "-n", "--profile", str(PROFILE), "--configfile", str(configfile)).stdout
    jobs = planned_resources(output)
    node = node_from_resources(yaml.safe_load((PROFILE / "config.yaml").read_text())["default-resources"])
    sized = {}
    for (rule, wildcards), values in jobs.items():
        if rule != "train":
            continue
        run = Run.parse(dict(item.split("=", 1) for item in wildcards.split(", "))["run"])
        expected = size_job(Workload.training(run.tuning, run.stage), 500_000_000, node)
        assert (int(values["mem_mb"]), int(values.get("gpu", 0))) == (expected.mem_mb, expected.gpu), wildcards
        sized[(run.stage, run.tuning)] = int(values["mem_mb"])
    assert len(sized) == 4
    # Full DPO holds the frozen reference model on the host too; LoRA DPO's reference is the base without the adapter.
    assert sized[("dpo", "full")] > sized[("sft", "full")]
    assert sized[("dpo", "lora")] == sized[("sft", "lora")]
