"""The workflow as a user drives it: the plan, the lint, config errors, and the whole demo run."""

import re

import pytest
import yaml
from conftest import ROOT, snakemake

# The dependency edges of the Shadow-FT chain on the demo, upstream -> downstream.
CHAIN_EDGES = [
    ("build_demo", "demo_training_config"),
    ("demo_training_config", "demo_train"),
    ("demo_train", "training_config"),
    ("check_llamafactory_names", "training_config"),
    ("training_config", "train"),
    ("train", "merge_adapter"),
    ("train", "extract_delta"),
    ("extract_delta", "graft"),
    ("graft", "evaluate"),
    ("merge_adapter", "evaluate"),
    ("train", "evaluate"),
    ("demo_train", "evaluate"),
    ("evaluate", "report"),
    ("report", "all"),
    ("demo_train", "similarity"),
    ("similarity", "report"),
    ("demo_train", "check_pair"),
    ("check_pair", "train"),
    ("check_pair", "similarity"),
    ("check_pair", "evaluate"),
    ("report", "figures"),
    ("similarity", "figures"),
    ("report", "alpha_figure"),
    ("figures", "all"),
    ("alpha_figure", "all"),
    ("train", "training_figure"),
    ("training_figure", "all"),
    ("train", "overlap"),
    ("demo_train", "overlap"),
    ("overlap", "report"),
    ("overlap", "overlap_figure"),
    ("overlap_figure", "all"),
    ("evaluate", "samples"),
    ("samples", "all"),
    ("report", "claim_figure"),
    ("claim_figure", "all"),
]


def planned_jobs(dry_run_output: str) -> dict[str, int]:
    """Snakemake's job-count table from a dry run: rule name -> number of jobs."""
    table = dry_run_output.split("Job stats:", 1)[1]
    return {
        name: int(count) for name, count in re.findall(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE) if name != "total"
    }


def test_dry_run_plans_the_whole_chain(tmp_path):
    result = snakemake(tmp_path, "-n", "--cores", "2")
    jobs = planned_jobs(result.stdout)
    assert jobs == {
        "all": 1,
        "build_demo": 1,
        "demo_training_config": 2,
        "demo_train": 2,
        "check_llamafactory_names": 1,
        "training_config": 4,
        "train": 4,
        "merge_adapter": 2,  # the LoRA run's two adapters: base_ft and instruct_ft are scored merged
        "extract_delta": 2,
        "graft": 8,
        "evaluate": 28,  # (base, instruct, then per run instruct_ft, base_ft and 4 grafts) x 2 benchmarks
        "report": 1,
        "samples": 2,  # one per benchmark
        "environment_versions": 3,  # core, train, eval
        "figures": 1,
        "alpha_figure": 1,
        "claim_figure": 1,
        "training_figure": 1,
        "similarity": 1,
        "check_pair": 1,
        "overlap": 2,
        "overlap_figure": 1,
    }


@pytest.mark.slow
def test_rulegraph_orders_the_chain(tmp_path):
    dot = snakemake(tmp_path, "--rulegraph").stdout
    rule_of = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.MULTILINE))
    edges = {(rule_of[a], rule_of[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.MULTILINE)}
    assert set(CHAIN_EDGES) <= edges, set(CHAIN_EDGES) - edges


@pytest.mark.slow
def test_lint_is_clean(tmp_path):
    result = snakemake(tmp_path, "--lint", check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Lints for" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "edit, named",
    [
        ({"training": {"dataset": "demo_task", "tunings": ["lorra"]}}, "training.tunings[0]"),
        ({"pairs": {"demo": {"base": "demo-base", "template": "qwen"}}}, "pairs.demo"),
        ({"graft": {"alphas": [1.0], "strength": 2}}, "strength"),
        (
            {
                "models": {
                    "demo-base": {"source": "local", "path": "/no/such/model"},
                    "demo-instruct": {"source": "demo", "role": "instruct"},
                }
            },
            "models.demo-base.path: /no/such/model is not a folder",
        ),
    ],
)
@pytest.mark.slow
@pytest.mark.bad_input("config", caught="plan")
def test_bad_config_fails_before_any_job(tmp_path, edit, named):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config.update(edit)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--configfile", str(path), check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr
    assert f"invalid configuration ({path})" in result.stdout + result.stderr, "the message names the file"
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
