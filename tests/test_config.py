"""The configuration schema: defaults, and bad input rejected with the key named."""

import pytest
import yaml
from conftest import ROOT

from shadowft.config import ConfigError, alpha_label, validate_config, variants


@pytest.fixture
def demo_config():
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def test_demo_config_is_valid_and_gains_defaults(demo_config):
    del demo_config["graft"]
    validate_config(demo_config)
    assert demo_config["graft"] == {"alphas": [1.0], "preset": "official", "vocab_mismatch": "error"}
    assert demo_config["seed"] == 0


def test_hub_model_gains_revision_default(demo_config):
    demo_config["models"]["qwen-base"] = {"source": "hub", "repo": "Qwen/Qwen2.5-7B"}
    validate_config(demo_config)
    assert demo_config["models"]["qwen-base"]["revision"] == "main"
    assert demo_config["models"]["qwen-base"]["allow_pickle"] is False
    assert "revision" not in demo_config["models"]["demo-base"]


@pytest.mark.parametrize(
    "mutate, named",
    [
        (lambda c: c.update(learning_rate=1e-4), "learning_rate"),
        (lambda c: c["graft"].update(alpah=1.0), "alpah"),
        (lambda c: c["training"].update(tunings=["lorra"]), "training.tunings[0]"),
        (lambda c: c["graft"].update(alphas="1.0"), "graft.alphas"),
        (lambda c: c.update(graft=5), "graft"),
        (lambda c: c["pairs"]["demo"].pop("instruct"), "pairs.demo"),
        (lambda c: c.pop("pairs"), "pairs"),
        (lambda c: c["pairs"]["demo"].update(base="no-such-model"), "pairs.demo.base"),
        (lambda c: c["models"]["demo-base"].update(repo="a/b"), "models.demo-base"),
        (lambda c: c["models"].update(x={"source": "hub"}), "models.x"),
        (lambda c: c["training"].update(dataset="missing"), "training.dataset"),
        (lambda c: c["datasets"].update(demo_other={"source": "demo"}), "datasets.demo_other"),
        (lambda c: c.update(seed="zero"), "seed"),
        (lambda c: c.update(seed="1.5"), "seed"),
        (
            lambda c: c["evaluation"]["benchmarks"]["demo_task"].update(kind="mmlu"),
            "evaluation.benchmarks.demo_task.kind",
        ),
        (lambda c: c["pairs"].update({"bad/name": c["pairs"]["demo"]}), "pairs"),
        (lambda c: c["graft"].update(alphas=[float("nan")]), "graft.alphas[0]: not a finite number"),
        (lambda c: c["graft"].update(alphas=[1.0, float("inf")]), "graft.alphas[1]: not a finite number"),
        (
            lambda c: c["training"]["hyperparameters"]["lora"].update(learning_rate=float("nan")),
            "training.hyperparameters.lora.learning_rate: not a finite number",
        ),
        (lambda c: c["graft"].update(alphas=["one"]), "graft.alphas[0]: 'one' is not of type 'number'"),
    ],
)
def test_bad_config_names_the_key(demo_config, mutate, named):
    mutate(demo_config)
    with pytest.raises(ConfigError) as error:
        validate_config(demo_config)
    assert named in str(error.value)


def test_variants_follow_tunings_and_alphas(demo_config):
    demo_config["graft"] = {"alphas": [1.0, 0.5]}
    validate_config(demo_config)
    assert variants(demo_config) == [
        "base",
        "instruct",
        "lora/instruct_ft",
        "lora/shadow_a1",
        "lora/shadow_a0.5",
        "full/instruct_ft",
        "full/shadow_a1",
        "full/shadow_a0.5",
    ]


def test_alpha_label_is_short_and_exact():
    assert [alpha_label(a) for a in (1.0, 0.5, 2, 0.25)] == ["1", "0.5", "2", "0.25"]


def test_text_where_a_number_or_boolean_belongs_is_read_as_one(demo_config):
    """`snakemake --config graft={alphas: [0.5, 1]}` passes nested values as text; PyYAML reads 1e-4 as text."""
    demo_config["graft"] = {"alphas": ["0.5", "1e-1"]}
    demo_config["seed"] = "3"
    demo_config["models"]["qwen-base"] = {"source": "hub", "repo": "Qwen/Qwen2.5-7B", "allow_pickle": "false"}
    validate_config(demo_config)
    assert demo_config["graft"]["alphas"] == [0.5, 0.1]
    assert demo_config["seed"] == 3
    assert demo_config["models"]["qwen-base"]["allow_pickle"] is False
