"""The demo, grafted at alpha 1 and scored on its task, through a real SLURM cluster (.ci/slurm
starts one), from the session's demo pair: every job but the local ones goes through sbatch, the
GPU rules are granted the fake GPUs, a job killed mid-run is reported with its SLURM log and
resumed by a rerun that redoes nothing else, and the grafted models and scores are bit-identical
to the session's local run."""

import os
import re
import shutil
import subprocess
import time

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, demo_runs, snakemake, snakemake_command, with_demo_pair
from safetensors.torch import load_file
from test_workflow import planned_jobs

pytestmark = pytest.mark.slow

PROFILES = ("--profile", str(ROOT / "profiles" / "slurm"), "--profile", str(ROOT / "tests" / "slurm_ci_profile.yaml"))
# The demo on the cluster grafts at alpha 1 alone and scores the task alone: every kind of job
# still goes through sbatch (each starting its tools afresh: no warm workers under SLURM), and
# the other grafts and evaluations are the local run's, which this one is compared with. The
# pair itself is the local run's too: making it is training, as the runs are.
CLUSTER_ALPHAS = [1.0]
CLUSTER_BENCHMARKS = ["demo_task"]
LOCAL_RULES = {
    "check_llamafactory_names",
    "demo_training_config",
    "training_config",
    "check_pair",
    "environment_versions",
    "all",
}
GPU_RULES = {"demo_train", "train", "evaluate"}
RUNS = demo_runs()  # the demo's runs, one per tuning
# The job the test kills: the baseline's full fine-tune, whose only dependants are its
# evaluations and the report.
KILLED_RULE, KILLED_WILDCARDS = "train", f"demo_{RUNS['full']}_instruct"
SUBMITTED = re.compile(
    r"has been submitted with SLURM jobid (\d+) \(log: \S+/slurm_logs/rule_(\w+)/(?:(\S+)/)?\d+\.log\)"
)


def cluster_or_skip(nodes=1):
    """Skip where no SLURM runs with `nodes` nodes up; in CI, where .ci/run starts one, fail instead."""
    problem = None
    if shutil.which("sbatch") is None:
        problem = "sbatch is not installed (.ci/slurm install)"
    else:
        probe = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=60)
        states = [line.split() for line in probe.stdout.splitlines()]
        up = {name for name, state in states if state in {"idle", "mixed", "allocated"}}
        if probe.returncode != 0 or len(up) < nodes:
            said = probe.stdout.strip() or probe.stderr.strip()
            problem = f"fewer than {nodes} SLURM node(s) up (.ci/slurm start): {said}"
    if problem and os.environ.get("CI") == "true":
        pytest.fail(f"CI runs the SLURM tests, but {problem}")
    if problem:
        pytest.skip(problem)


def squeue_jobs():
    """(job id, state, comment) of the queued and running jobs; the plugin puts rule and wildcards in the comment."""
    out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%k"], capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|", 2)) for line in out.splitlines() if line.strip()]


def submissions(output):
    """(SLURM job id, rule, wildcards folder) of every job a Snakemake run submitted."""
    return [(int(job), rule, wildcards) for job, rule, wildcards in SUBMITTED.findall(output)]


def job_details(job_id):
    out = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True, check=True).stdout
    return dict(re.findall(r"(\w+(?:/\w+)?)=(\S*)", out))


def state_dict(folder):
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def cluster_config(workdir):
    """The demo config with the cluster run's alphas and benchmark, as a file."""
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["graft"]["alphas"] = CLUSTER_ALPHAS
    benchmarks = config["evaluation"]["benchmarks"]
    config["evaluation"]["benchmarks"] = {name: benchmarks[name] for name in CLUSTER_BENCHMARKS}
    configfile = workdir / "cluster.yaml"
    configfile.write_text(yaml.safe_dump(config))
    return ("--configfile", str(configfile))


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, demo_run):
    cluster_or_skip()
    workdir = with_demo_pair(tmp_path_factory.mktemp("slurm"), demo_run)
    cluster_run = (*PROFILES, *cluster_config(workdir))
    plan = planned_jobs(snakemake(workdir, "-n", *cluster_run).stdout)

    started = time.monotonic()
    command, env = snakemake_command(workdir, *cluster_run)
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    killed = None
    try:
        while first.poll() is None and killed is None:
            for job_id, state, comment in squeue_jobs():
                if state == "RUNNING" and comment.strip() == f"rule_{KILLED_RULE}_wildcards_{KILLED_WILDCARDS}":
                    time.sleep(3)  # let it get into training
                    subprocess.run(["scancel", job_id], check=True)
                    killed = int(job_id)
            time.sleep(0.5)
        first_output, _ = first.communicate(timeout=1800)
    finally:
        if first.poll() is None:
            first.kill()
    first_seconds = time.monotonic() - started

    replan = planned_jobs(snakemake(workdir, "-n", *cluster_run).stdout)
    started = time.monotonic()
    second = snakemake(workdir, *cluster_run, timeout=1800)
    print(f"SLURM demo: first run {first_seconds:.0f} s (one job killed), resume {time.monotonic() - started:.0f} s")
    return {
        "workdir": workdir,
        "plan": plan,
        "replan": replan,
        "killed": killed,
        "first": first,
        "first_output": first_output,
        "second_output": second.stdout + second.stderr,
    }


def test_the_killed_job_fails_the_run_naming_its_slurm_log(slurm_run):
    assert slurm_run["killed"] is not None, "the job to kill never ran:\n" + slurm_run["first_output"][-3000:]
    assert slurm_run["first"].returncode != 0
    log = f"slurm_logs/rule_{KILLED_RULE}/{KILLED_WILDCARDS}/{slurm_run['killed']}.log"
    assert re.search(rf"Error in rule {KILLED_RULE}:(.|\n)*{re.escape(log)}", slurm_run["first_output"]), slurm_run[
        "first_output"
    ][-4000:]


def test_the_rerun_redoes_only_the_killed_job_and_its_dependants(slurm_run):
    # The killed run's baseline is scored and its overlap measured again, and every part of the
    # report that reads them is redrawn.
    report = {"report": 1, "samples": len(CLUSTER_BENCHMARKS), "figures": 1, "alpha_figure": 1, "training_figure": 1}
    report.update(overlap_figure=1, all=1)
    assert slurm_run["replan"] == {KILLED_RULE: 1, "evaluate": len(CLUSTER_BENCHMARKS), "overlap": 1, **report}


def test_every_cluster_job_went_through_sbatch(slurm_run):
    submitted = submissions(slurm_run["first_output"]) + submissions(slurm_run["second_output"])
    jobs = {(rule, wildcards) for _, rule, wildcards in submitted}
    expected = sum(count for rule, count in slurm_run["plan"].items() if rule not in LOCAL_RULES)
    assert len(jobs) == expected
    assert not {rule for rule, _ in jobs} & LOCAL_RULES
    # The killed job was submitted twice: once killed, once resumed.
    assert sum(1 for _, rule, wildcards in submitted if (rule, wildcards) == (KILLED_RULE, KILLED_WILDCARDS)) == 2


def test_gpu_rules_asked_for_a_gpu_and_slurm_granted_one(slurm_run):
    workdir = slurm_run["workdir"]
    submitted = submissions(slurm_run["first_output"]) + submissions(slurm_run["second_output"])
    for job_id, rule, wildcards in submitted:
        details = job_details(job_id)
        if rule in GPU_RULES:
            assert details.get("TresPerJob") == "gres:gpu:1", (rule, wildcards, details)
        else:
            assert "gpu" not in details.get("TresPerJob", ""), (rule, wildcards, details)
        assert details["JobState"] == ("CANCELLED" if job_id == slurm_run["killed"] else "COMPLETED"), (rule, details)
    # Inside the job, the device SLURM granted is what the tools see.
    train_log = (workdir / "logs" / "train" / "demo" / RUNS["lora"] / "base.log").read_text()
    assert re.search(r"shadowft: devices CUDA_VISIBLE_DEVICES=[01]\b", train_log)
    eval_logs = list((workdir / "logs" / "evaluate").rglob("*.log"))
    assert eval_logs and all(
        re.search(r"devices: 1 GPU\(s\), CUDA_VISIBLE_DEVICES=[01]\b", log.read_text()) for log in eval_logs
    )


def test_grafts_and_scores_equal_a_local_run(slurm_run, demo_run):
    for tuning, run in RUNS.items():
        on_cluster = state_dict(slurm_run["workdir"] / "results" / "demo" / run / "shadow_a1")
        local = state_dict(demo_run / "results" / "demo" / run / "shadow_a1")
        assert on_cluster.keys() == local.keys()
        for name, tensor in local.items():
            assert torch.equal(on_cluster[name], tensor), (tuning, name)
    on_cluster = pd.read_csv(slurm_run["workdir"] / "results" / "summary.csv")
    local = pd.read_csv(demo_run / "results" / "summary.csv")
    # Every variant but the grafts at the other alphas.
    local = local[local["alpha"].isna() | local["alpha"].isin(CLUSTER_ALPHAS)]
    local = local[local["benchmark"].isin(CLUSTER_BENCHMARKS)].reset_index(drop=True)
    tuned = ("instruct_ft", "base_ft", "shadow_a1")
    variants = {"base", "instruct"} | {f"{run}/{kind}" for run in RUNS.values() for kind in tuned}
    assert set(on_cluster["variant"]) == variants
    pd.testing.assert_frame_equal(on_cluster, local)
