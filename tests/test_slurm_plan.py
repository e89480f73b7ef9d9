"""`snakemake --profile slurm -n` on a real-size pair: what each job would ask SLURM for.

The pair is two 4.02 B-parameter checkpoints whose tensor data are file holes (headers
real, bytes free), given as local models, so the plan reads their size before any job runs.
"""

import json
import math
import re

import pytest
import yaml
from conftest import ROOT, snakemake
from model_fixtures import write_sparse_model

from shadowft.training.resources import GIB, MIB, Workload, node_from_resources, size_job
from shadowft.workflow.sweep import Run

pytestmark = pytest.mark.slow  # each plan is a dry run of Snakemake

PARAMETERS = 4_022_468_096
PROFILE = ROOT / "profiles" / "slurm"
DATASET_BYTES = 3_000_000
QUESTIONS, MAX_OUT_LEN = 200, 512
# The runs of the config below (shadowft.workflow.sweep names them): the paper's learning rates and rank, seed 0.
LORA_RUN, FULL_RUN = "sft-lora-lr2e-4-r8-s0", "sft-full-lr1e-5-s0"


@pytest.fixture(scope="module")
def plan(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan4b")
    write_sparse_model(root / "base", PARAMETERS)
    write_sparse_model(root / "instruct", PARAMETERS)
    data = root / "data"
    data.mkdir()
    (data / "dataset_info.json").write_text(json.dumps({"sft": {"file_name": "train.json", "formatting": "sharegpt"}}))
    (data / "train.json").write_bytes(b" " * (DATASET_BYTES - 100))
    (data / "eval.jsonl").write_text(
        "".join(json.dumps({"question": f"q{i}", "answer": "a"}) + "\n" for i in range(QUESTIONS))
    )
    config = {
        "models": {
            "q4-base": {"source": "local", "path": str(root / "base")},
            "q4-instruct": {"source": "local", "path": str(root / "instruct")},
        },
        "pairs": {"q4": {"base": "q4-base", "instruct": "q4-instruct", "template": "qwen3"}},
        "datasets": {"sft": {"source": "local", "path": str(data)}},
        "training": {"dataset": "sft", "tunings": ["lora", "full"]},
        "evaluation": {"benchmarks": {"held_out": {"kind": "custom", "dataset": "sft", "max_out_len": MAX_OUT_LEN}}},
    }
    config_file = root / "q4.yaml"
    config_file.write_text(yaml.safe_dump(config))
    workdir = root / "work"
    workdir.mkdir()
    output = snakemake(workdir, "-n", "--profile", str(PROFILE), "--configfile", str(config_file)).stdout
    jobs = planned_resources(output)
    small_node = root / "small-node.yaml"
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    profile["default-resources"].update(node_gpus=1, node_gpu_mem_mb=24576, max_nodes=1)
    small_node.write_text(yaml.safe_dump({"default-resources": profile["default-resources"]}))
    refused = snakemake(
        workdir,
        "-n",
        "--profile",
        str(PROFILE),
        "--profile",
        str(small_node),
        "--configfile",
        str(config_file),
        check=False,
    )
    # Small GPUs, but up to four nodes a job: full fine-tuning spans nodes.
    multi_node = root / "multi-node.yaml"
    profile["default-resources"].update(node_gpus=2, node_gpu_mem_mb=24576, max_nodes=4)
    multi_node.write_text(yaml.safe_dump({"default-resources": profile["default-resources"]}))
    spanning = snakemake(
        workdir, "-n", "--profile", str(PROFILE), "--profile", str(multi_node), "--configfile", str(config_file)
    ).stdout
    return jobs, data, refused, planned_resources(spanning)


def planned_resources(dry_run_output):
    """(rule, wildcards) -> {resource: value} of every job a dry run plans."""
    jobs = {}
    for block in dry_run_output.split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.MULTILINE)
        resources = re.search(r"^\s+resources: (.*)$", block, re.MULTILINE)
        wildcards = re.search(r"^\s+wildcards: (.*)$", block, re.MULTILINE)
        if rule and resources:
            values = dict(item.split("=", 1) for item in resources.group(1).split(", "))
            jobs[(rule.group(1), wildcards.group(1) if wildcards else "")] = values
    return jobs


def run_of(wildcards):
    """The run named in a job's wildcards ("pair=q4, run=..., role=base")."""
    return Run.parse(dict(item.split("=", 1) for item in wildcards.split(", "))["run"])


def node():
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    return node_from_resources(profile["default-resources"])


def requested(jobs, rule, wildcards):
    values = jobs[(rule, wildcards)]
    return {key: values.get(key) for key in ("gpu", "nodes", "mem_mb", "runtime", "cpus_per_gpu")}


def test_full_tuning_asks_for_two_gpus_and_lora_for_one(plan):
    jobs, data, _, _ = plan
    full = requested(jobs, "train", f"pair=q4, run={FULL_RUN}, role=base")
    lora = requested(jobs, "train", f"pair=q4, run={LORA_RUN}, role=instruct")
    # 18 bytes x 4.02e9 = 67.4 GiB of ZeRO-3 state; an 80 GB card holds 72 GiB less a 6.8 GiB reserve.
    assert (full["gpu"], full["nodes"]) == ("2", "1")
    assert (lora["gpu"], lora["nodes"]) == ("1", "1")
    # A GPU's share of the node's 64 CPUs.
    assert full["cpus_per_gpu"] == lora["cpus_per_gpu"] == "8"
    # Host memory: 4 GiB, 4 GiB per GPU, 4 bytes a parameter.
    assert int(full["mem_mb"]) == math.ceil((12 * GIB + 4 * PARAMETERS) / MIB)
    assert int(lora["mem_mb"]) == math.ceil((8 * GIB + 4 * PARAMETERS) / MIB)
    # Time: 8 (full) or 6 (LoRA) FLOP a parameter a token over the data's tokens at 1e14 FLOP/s
    # per GPU, doubled, plus 20 minutes of start-up.
    tokens = sum(path.stat().st_size for path in data.iterdir()) / 3  # about 3 bytes a token
    assert int(full["runtime"]) == 20 + math.ceil(2 * 8 * PARAMETERS * tokens / (2 * 1e14) / 60)
    assert int(lora["runtime"]) == 20 + math.ceil(2 * 6 * PARAMETERS * tokens / 1e14 / 60)


def test_every_sized_job_matches_the_sizing_rule_for_the_profiles_node(plan):
    jobs, data, _, _ = plan
    tokens = sum(path.stat().st_size for path in data.iterdir()) / 3
    for (rule, wildcards), values in jobs.items():
        workload = {
            "train": Workload.training(run_of(wildcards).tuning, run_of(wildcards).stage) if rule == "train" else None,
            "evaluate": Workload.EVALUATE,
            "merge_adapter": Workload.MERGE,
            "extract_delta": Workload.ENGINE,
            "graft": Workload.ENGINE,
            "similarity": Workload.ENGINE,
            "overlap": Workload.ENGINE,
        }.get(rule)
        if workload is None:
            continue
        job_tokens = {Workload.EVALUATE: QUESTIONS * MAX_OUT_LEN}.get(workload, tokens if rule == "train" else 0.0)
        expected = size_job(workload, PARAMETERS, node(), tokens=job_tokens)
        assert int(values["mem_mb"]) == expected.mem_mb, (rule, wildcards)
        assert int(values["runtime"]) == expected.runtime, (rule, wildcards)
        assert int(values.get("gpu", 0)) == expected.gpu, (rule, wildcards)
        assert int(values["mem_mb"]) <= node().mem_mb


def test_cpu_jobs_ask_for_no_gpu_and_evaluation_for_one(plan):
    jobs, _, _, _ = plan
    for (rule, wildcards), values in jobs.items():
        if rule in ("extract_delta", "graft", "similarity", "overlap"):
            assert "gpu" not in values and values["mem_mb"] == "2048", (rule, values)
        if rule == "merge_adapter":
            assert "gpu" not in values, values
        if rule == "evaluate":
            assert values["gpu"] == "1", (wildcards, values)


def test_downloads_run_on_the_login_node(plan):
    jobs, _, _, _ = plan
    downloads = [key for key in jobs if key[0] == "download_model"]
    assert len(downloads) == 2


def test_a_job_no_node_can_hold_stops_the_plan_naming_the_rule_and_the_node(plan):
    _, _, refused, _ = plan
    output = refused.stdout + refused.stderr
    assert refused.returncode != 0
    # 18 bytes x 4.02e9 over 21.6 GiB usable less 6.8 GiB of reserve: 5 GPUs, one per node.
    assert "in rule train" in output and f"run={FULL_RUN}" in output
    assert (
        "train_full of a 4.02 B-parameter model needs 5 GPUs (5 nodes), "
        "but the profile allows a node with 1 GPU(s) of 24576 MB" in output
    )


def test_full_tuning_too_large_for_a_node_spans_nodes_with_one_launcher_per_node(plan):
    *_, spanning = plan
    full = spanning[("train", f"pair=q4, run={FULL_RUN}, role=base")]
    # 67.4 GiB of state over 21.6 GiB usable less 6.8 GiB of reserve: 5 GPUs -> 3 nodes of 2.
    assert (full["gpu"], full["nodes"], full["tasks_per_node"], full["mpi"]) == ("6", "3", "2", "srun")
    assert full["gres"] == "gpu:2"  # per node: --gpus=6 alone would let SLURM spread them unevenly
    lora = spanning[("train", f"pair=q4, run={LORA_RUN}, role=base")]
    assert (lora["gpu"], lora["nodes"]) == ("1", "1") and "mpi" not in lora and "gres" not in lora
