"""Shadow-DPO on the demo through the workflow with the real tools: LLaMA-Factory's DPO on base
(the update) and on instruct (the baseline), from the demo's preference pairs, and the graft
checked against instruct + alpha * delta computed here with torch alone."""

import json

import pytest
import yaml
from conftest import ROOT, snakemake, with_demo_pair
from test_demo_run import assert_full_graft, assert_lora_graft

pytestmark = pytest.mark.slow

ALPHA = 0.5  # not 1: the graft must scale the update
RUNS = {"lora": "dpo-lora-lr3e-3-r8-s0", "full": "dpo-full-lr1e-3-s0"}


@pytest.fixture(scope="module")
def dpo_run(tmp_path_factory, demo_run):
    """The demo config with stage dpo alone and one graft strength, run up to the grafts and the
    baselines, on the session's demo pair."""
    workdir = with_demo_pair(tmp_path_factory.mktemp("dpo"), demo_run)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["training"]["stages"] = ["dpo"]
    config["graft"]["alphas"] = [ALPHA]
    configfile = workdir / "dpo.yaml"
    configfile.write_text(yaml.safe_dump(config))
    targets = [f"results/demo/{run}/shadow_a{ALPHA}" for run in RUNS.values()]
    targets += [f"results/demo/{run}/train_instruct/model" for run in RUNS.values()]
    snakemake(workdir, "--cores", "2", *targets, "--configfile", str(configfile), timeout=1500)
    return workdir


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_both_models_are_tuned_with_llamafactory_dpo_on_the_preference_pairs(dpo_run, tuning):
    for role in ("base", "instruct"):
        args = yaml.safe_load((dpo_run / "results" / "demo" / RUNS[tuning] / f"train_{role}.yaml").read_text())
        assert (args["stage"], args["finetuning_type"], args["dataset"]) == ("dpo", tuning, "demo_preference")
        assert (args["pref_beta"], args["pref_loss"]) == (0.1, "sigmoid")
        log = (dpo_run / "logs" / "train" / "demo" / RUNS[tuning] / f"{role}.log").read_text()
        # The DPO trainer's own metrics: it compared chosen with rejected replies against a reference.
        assert "rewards/accuracies" in log and "rewards/margins" in log
    info = json.loads((dpo_run / "data" / "demo" / "demo_preference" / "dataset_info.json").read_text())
    assert info["demo_preference"]["ranking"] is True


def test_lora_dpo_graft_is_instruct_plus_alpha_times_the_adapter_update(dpo_run):
    assert_lora_graft(dpo_run, RUNS["lora"], ALPHA)


def test_full_dpo_graft_is_instruct_plus_alpha_times_the_base_update_on_projections(dpo_run):
    assert_full_graft(dpo_run, RUNS["full"], ALPHA)
