"""Security settings reach every tool the same way: a model's trust_remote_code (off unless its
entry or family file says so) goes to its training, its adapter export and its evaluations.
And config values reach command lines as data: shell syntax in them runs nothing."""

import re

import pytest
import yaml
from conftest import ROOT, demo_runs, snakemake
from model_fixtures import local_pair_experiment
from test_report import write_overlap, write_scores, write_similarity

from shadowft.data.datasets import ROWS_FILE
from shadowft.report import read_summary
from shadowft.report.document import REMOTE_CODE_MARK, REMOTE_CODE_NOTE
from shadowft.training.arguments import training_arguments
from shadowft.versions import Hardware

RUN = demo_runs()["lora"]


@pytest.mark.bad_input("LLaMA-Factory", caught="check")
def test_training_arguments_carry_the_models_setting_and_no_override_changes_it():
    common = dict(model_dir="m", dataset_dir="d", dataset="x", template="qwen", tuning="lora", output_dir="o")
    assert training_arguments(**common)["trust_remote_code"] is False
    assert training_arguments(**common, trust_remote_code=True)["trust_remote_code"] is True
    with pytest.raises(ValueError, match="trust_remote_code is set by the model's entry"):
        training_arguments(**common, overrides={"trust_remote_code": True})


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
        output = re.search(r"output: ([^\s,]+)", block)  # the first output (an evaluation's scores.csv)
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
    # The report marks the variants whose models ran their own code, from the same setting.
    for path in scored:
        write_scores(workdir / path, [("held_out", "held_out", "exact_match", 50.0, 1)])
        (workdir / path).with_name("predictions.json").write_text("{}")  # no answers: no intervals, no samples
        Hardware.here().write((workdir / path).with_name("hardware.json"))
    write_similarity(workdir / "results/p/similarity.csv")
    write_overlap(workdir / f"results/p/{RUN}/overlap.csv")
    allowed = ("--allowed-rules", "report", "environment_versions")
    snakemake(workdir, "results/summary.md", "--cores", "1", "--configfile", str(configfile), *allowed)
    summary = read_summary(workdir / "results/summary.csv")
    assert summary.groupby("variant")["trust_remote_code"].agg(set).to_dict() == {
        "base": {False},
        "instruct": {True},
        f"{RUN}/base_ft": {False},
        f"{RUN}/instruct_ft": {True},
        f"{RUN}/shadow_a1": {True},  # instruct's model, evaluated with its code
    }
    markdown = (workdir / "results/summary.md").read_text()
    table = markdown.split("\nTable 1: ", 1)[1].split("\n\n", 2)[1]  # the scores, after their caption
    labels = [line.split(" | ")[0].removeprefix("| ") for line in table.splitlines()]
    mark = f" {REMOTE_CODE_MARK}"
    assert labels[2:] == [
        "Base",
        "Instruct" + mark,
        "Base + LoRA",
        "Instruct + LoRA" + mark,
        "Shadow-LoRA (α=1)" + mark,
    ]
    assert REMOTE_CODE_NOTE in markdown
    page = (workdir / "results/summary.html").read_text()
    assert all(f'<td class="text">{label}</td>' in page for label in (f"Instruct{mark}", "Base", "Base + LoRA"))


# Quotes, command substitutions, backticks and separators: run by any shell that was handed
# the text unquoted, each would leave a file named PWNED<n> in the folder the job ran in.
HOSTILE = 'we\'ird "$(touch PWNED1)" `touch PWNED2`; touch PWNED3 & touch PWNED4 #'
PWNED = {f"PWNED{n}" for n in range(1, 6)}


def pwned_files(*folders) -> list:
    return [path for folder in folders for path in folder.rglob("PWNED*") if path.name in PWNED]


def hostile_experiment(demo_run, root):
    """The demo's trained pair, its task's rows and its held-out questions, under folder and file
    names full of shell syntax, with shell syntax in a training argument and a chat-template
    argument too: every free-text value of a config that reaches a rule's command line."""
    import shutil

    inputs = root / f"in {HOSTILE}"
    for role in ("base", "instruct"):
        shutil.copytree(demo_run / f"data/demo/{role}/model", inputs / role)
    rows = (demo_run / "data/demo/demo_task/train.jsonl").read_text().splitlines()[:32]
    rows_file = inputs / f"rows {HOSTILE}.jsonl"
    rows_file.write_text("\n".join(rows) + "\n")
    shutil.copytree(demo_run / "data/demo/demo_task", inputs / "questions")
    (root / "sparse").mkdir()
    config, _ = local_pair_experiment(root / "sparse")
    config["models"] = {"b": {"source": "local", "path": str(inputs / "base")}}
    config["models"]["i"] = {"source": "local", "path": str(inputs / "instruct")}
    config["pairs"]["p"]["chat_template_kwargs"] = {"note": HOSTILE}
    # The questions' folder registers its dataset as demo_task: the config's key must match.
    config["datasets"] = {
        "rows": {"source": "local", "file": str(rows_file), "format": "sharegpt"},
        "demo_task": {"source": "local", "path": str(inputs / "questions")},
    }
    config["evaluation"]["benchmarks"]["held_out"]["dataset"] = "demo_task"
    config["training"]["dataset"] = "rows"
    config["training"]["hyperparameters"]["common"].update(max_steps=2, run_name=HOSTILE)
    return config, root / "experiment.yaml"


@pytest.mark.slow
def test_shell_syntax_in_config_values_runs_nothing(demo_run, tmp_path):
    config, configfile = hostile_experiment(demo_run, tmp_path)
    configfile.write_text(yaml.safe_dump(config))
    # prepare_dataset, training_config, train, merge_adapter and evaluate: the rules that build
    # a command line, each handed the hostile paths and values.
    targets = [f"results/p/eval/{RUN}/base_ft/held_out/scores.csv", "results/p/eval/instruct/held_out/scores.csv"]
    snakemake(tmp_path, *targets, "--cores", "2", "--configfile", str(configfile))
    assert pwned_files(tmp_path, ROOT) == []
    assert yaml.safe_load((tmp_path / f"results/p/{RUN}/train_base.yaml").read_text())["run_name"] == HOSTILE
    prepared = (tmp_path / "data/datasets/rows" / ROWS_FILE).read_text().splitlines()
    assert len(prepared) == 32

    # A template is a name LLaMA-Factory must know: refused before training, still running nothing.
    config["pairs"]["p"]["template"] = f"qwen {HOSTILE}"
    configfile.write_text(yaml.safe_dump(config))
    refused = snakemake(tmp_path, f"results/p/{RUN}/train_instruct.yaml", "--cores", "1",
                        "--configfile", str(configfile), check=False)  # fmt: skip
    assert refused.returncode != 0
    # The run's first job checks LLaMA-Factory's names (rule check_llamafactory_names).
    assert "has no template" in (tmp_path / "logs/check/llamafactory.log").read_text()
    assert pwned_files(tmp_path, ROOT) == []
