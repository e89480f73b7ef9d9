"""Security settings reach every tool the same way: a model's trust_remote_code (off unless its
entry or family file says so) goes to its training, its adapter export and its evaluations."""

import re

import pytest
import yaml
from conftest import snakemake
from model_fixtures import local_pair_experiment

from shadowft import llamafactory

RUN = "sft-lora-lr3e-3-r8-s0"


def test_training_arguments_carry_the_models_setting_and_no_override_changes_it():
    common = dict(model_dir="m", dataset_dir="d", dataset="x", template="qwen", tuning="lora", output_dir="o")
    assert llamafactory.training_arguments(**common)["trust_remote_code"] is False
    assert llamafactory.training_arguments(**common, trust_remote_code=True)["trust_remote_code"] is True
    with pytest.raises(ValueError, match="trust_remote_code by the model's entry"):
        llamafactory.training_arguments(**common, overrides={"trust_remote_code": True})


@pytest.fixture
def trusting_instruct(tmp_path):
    """An experiment whose instruct model (only) may run its own code."""
    config, configfile = local_pair_experiment(tmp_path)
    config["models"]["i"]["trust_remote_code"] = True
    config["evaluation"]["variants"] = ["base", "instruct", "instruct_ft", "base_ft", "shadow"]
    configfile.write_text(yaml.safe_dump(config))
    return tmp_path, configfile


@pytest.mark.slow
def test_the_same_setting_reaches_training_export_and_evaluation(trusting_instruct):
    workdir, configfile = trusting_instruct
    targets = [f"results/p/{RUN}/train_{role}.yaml" for role in ("base", "instruct")]
    snakemake(workdir, *targets, "--cores", "1", "--configfile", str(configfile))
    written = {
        role: yaml.safe_load((workdir / f"results/p/{RUN}/train_{role}.yaml").read_text())
        for role in ("base", "instruct")
    }
    assert (written["base"]["trust_remote_code"], written["instruct"]["trust_remote_code"]) == (False, True)

    plan = snakemake(workdir, "-n", "-p", "--cores", "1", "--configfile", str(configfile)).stdout
    commands = {}
    for block in plan.split("\n\n"):
        output = re.search(r"output: (\S+)", block)
        command = next((line for line in block.splitlines() if "-m shadowft." in line), None)
        if output and command:
            commands[output.group(1)] = command
    trusting = {path for path, command in commands.items() if "--trust-remote-code" in command}
    scored = {path: "--trust-remote-code" in command for path, command in commands.items() if "/eval/" in path}
    assert scored == {
        "results/p/eval/base/held_out/scores.csv": False,
        "results/p/eval/instruct/held_out/scores.csv": True,
        f"results/p/eval/{RUN}/base_ft/held_out/scores.csv": False,
        f"results/p/eval/{RUN}/instruct_ft/held_out/scores.csv": True,
        f"results/p/eval/{RUN}/shadow_a1/held_out/scores.csv": True,
    }
    assert f"results/p/{RUN}/train_instruct/merged" in trusting
    assert f"results/p/{RUN}/train_base/merged" not in trusting and f"results/p/{RUN}/train_base/merged" in commands
