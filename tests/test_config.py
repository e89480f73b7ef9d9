"""The configuration schema: defaults, and bad input rejected with the key named."""

import json

import pytest
import yaml
from conftest import ROOT

from shadowft.demo import build as demo
from shadowft.evaluation import spec
from shadowft.training.arguments import TUNING_DEFAULTS
from shadowft.workflow.config import ConfigError, validate_config
from shadowft.workflow.sweep import alpha_label, runs, variants


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
        (
            lambda c: c["models"].update(x={"source": "local", "path": "/no/such/model"}),
            "models.x.path: /no/such/model is not a folder",
        ),
        (
            lambda c: c["datasets"].update(x={"source": "local", "file": "/no/such/rows.jsonl"}),
            "datasets.x.file: /no/such/rows.jsonl is not a file",
        ),
        (
            lambda c: c["training"]["hyperparameters"]["common"].update(trust_remote_code=True),
            "training.hyperparameters.common.trust_remote_code: set by the model's entry",
        ),
        (
            lambda c: c["training"]["hyperparameters"].update(lora={"output_dir": "elsewhere"}),
            "training.hyperparameters.lora.output_dir: set by the workflow's paths",
        ),
        (
            lambda c: c["pairs"]["demo"].update(hyperparameters={"common": {"seed": 3}}),
            "pairs.demo.hyperparameters.common.seed: set by the run's seed",
        ),
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
            lambda c: c["training"]["hyperparameters"]["common"].update(warmup_ratio=float("nan")),
            "training.hyperparameters.common.warmup_ratio: not a finite number",
        ),
        (lambda c: c["graft"].update(alphas=["one"]), "graft.alphas[0]: 'one' is not of type 'number'"),
        (lambda c: c["graft"].update(alphas=[-0.5]), "graft.alphas[0]: -0.5 is less than the minimum of 0"),
    ],
)
@pytest.mark.bad_input("config", caught="plan")
def test_bad_config_names_the_key(demo_config, mutate, named):
    mutate(demo_config)
    with pytest.raises(ConfigError) as error:
        validate_config(demo_config, demo_datasets=demo.DATASETS)
    assert named in str(error.value)


def test_variants_follow_tunings_and_alphas(demo_config):
    demo_config["graft"] = {"alphas": [1.0, 0.5]}
    validate_config(demo_config)
    assert [variant.name for variant in variants(demo_config)] == [
        "base",
        "instruct",
        "sft-lora-lr3e-3-r8-s0/instruct_ft",
        "sft-lora-lr3e-3-r8-s0/base_ft",
        "sft-lora-lr3e-3-r8-s0/shadow_a1",
        "sft-lora-lr3e-3-r8-s0/shadow_a0.5",
        "sft-full-lr1e-3-s0/instruct_ft",
        "sft-full-lr1e-3-s0/base_ft",
        "sft-full-lr1e-3-s0/shadow_a1",
        "sft-full-lr1e-3-s0/shadow_a0.5",
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


def test_the_demo_trains_as_before_the_sweep_keys(demo_config):
    """One run per tuning, at the demo's rates (LoRA 3e-3, full 1e-3), the paper's rank, the top-level seed."""
    validate_config(demo_config)
    training = demo_config["training"]
    assert (training["stages"], training["lora_ranks"], training["seeds"]) == (["sft"], [8], [])
    assert [run.name for run in runs(demo_config)] == ["sft-lora-lr3e-3-r8-s0", "sft-full-lr1e-3-s0"]
    demo_config["seed"] = 3
    assert [run.seed for run in runs(demo_config)] == [3, 3]


def test_sweep_defaults_are_the_papers(demo_config):
    del demo_config["training"]["learning_rates"], demo_config["training"]["lora_ranks"]
    validate_config(demo_config)
    rates = demo_config["training"]["learning_rates"]
    assert rates == {tuning: [TUNING_DEFAULTS[tuning]["learning_rate"]] for tuning in ("lora", "full")}
    assert demo_config["training"]["lora_ranks"] == [TUNING_DEFAULTS["lora"]["lora_rank"]]


def test_every_swept_combination_is_a_run_in_the_config_order(demo_config):
    demo_config["training"].update(
        stages=["sft", "dpo"],
        learning_rates={"lora": [1.0e-4, 2.0e-4], "full": [1.0e-5]},
        lora_ranks=[8, 64],
        seeds=[0, 1],
    )
    validate_config(demo_config)
    names = [run.name for run in runs(demo_config)]
    assert len(names) == len(set(names)) == 2 * (2 * 2 * 2 + 1 * 2)
    assert names[:5] == [
        "sft-lora-lr1e-4-r8-s0",
        "sft-lora-lr1e-4-r8-s1",
        "sft-lora-lr1e-4-r64-s0",
        "sft-lora-lr1e-4-r64-s1",
        "sft-lora-lr2e-4-r8-s0",
    ]
    assert "sft-full-lr1e-5-s1" in names and "dpo-full-lr1e-5-s0" in names


@pytest.mark.parametrize(
    "edit, named",
    [
        ({"hyperparameters": {"lora": {"learning_rate": 1.0e-4}}}, "training.hyperparameters.lora.learning_rate"),
        ({"hyperparameters": {"common": {"lora_rank": 16}}}, "training.hyperparameters.common.lora_rank"),
        ({"stages": ["dpo"], "preference_dataset": None}, "training.preference_dataset"),
        ({"stages": ["dpo"], "preference_dataset": "missing"}, "training.preference_dataset"),
        ({"stages": ["ppo"]}, "training.stages[0]"),
        ({"learning_rates": {"lora": ["fast"]}}, "training.learning_rates.lora[0]"),
        ({"learning_rates": {"lora": [0.0]}}, "training.learning_rates.lora[0]"),
        ({"learning_rates": {"lora": [1.0e-4, 1.0e-4]}}, "training.learning_rates.lora"),
        ({"learning_rates": {"qlora": [1.0e-4]}}, "qlora"),
        ({"lora_ranks": [0]}, "training.lora_ranks[0]"),
        ({"seeds": [-1]}, "training.seeds[0]"),
    ],
)
@pytest.mark.bad_input("config", caught="plan")
def test_bad_sweep_names_the_key(demo_config, edit, named):
    demo_config["training"].update(edit)
    if demo_config["training"].get("preference_dataset", "") is None:
        del demo_config["training"]["preference_dataset"]
    with pytest.raises(ConfigError) as error:
        validate_config(demo_config)
    assert named in str(error.value)


def write_dataset_folder(folder, registered):
    folder.mkdir()
    (folder / "dataset_info.json").write_text(registered)
    return folder


@pytest.mark.bad_input("dataset", caught="plan")
@pytest.mark.parametrize(
    "make, named",
    [
        (lambda root: root / "absent", "absent is not a folder; give a LLaMA-Factory dataset folder, or file: FILE"),
        (lambda root: (root / "a.jsonl").touch() or root / "a.jsonl", "a.jsonl is not a folder"),
        (lambda root: (root / "d").mkdir() or root / "d", "has no dataset_info.json, which LLaMA-Factory needs"),
        (
            lambda root: write_dataset_folder(root / "d", json.dumps({"other": {"file_name": "x.json"}})),
            "dataset_info.json does not register 'mine' (it registers: other)",
        ),
        (lambda root: write_dataset_folder(root / "d", "{not json"), "dataset_info.json is not valid JSON"),
    ],
)
def test_a_local_dataset_folder_must_register_the_dataset(demo_config, tmp_path, make, named):
    demo_config["datasets"]["mine"] = {"source": "local", "path": str(make(tmp_path))}
    demo_config["training"]["dataset"] = "mine"
    with pytest.raises(ConfigError) as error:
        validate_config(demo_config)
    assert f"datasets.mine.path: {tmp_path}" in str(error.value) and named in str(error.value)


def test_a_local_dataset_folder_that_registers_the_dataset_passes(demo_config, tmp_path):
    folder = write_dataset_folder(tmp_path / "d", json.dumps({"mine": {"file_name": "x.json"}}))
    demo_config["datasets"]["mine"] = {"source": "local", "path": str(folder)}
    validate_config(demo_config)


def test_the_schema_allows_the_benchmark_keys_and_defaults_the_code_reads():
    """One list of a benchmark entry's keys and defaults: shadowft.evaluation.spec's, which the
    schema repeats for the validator and its readers."""
    schema = yaml.safe_load((ROOT / "config" / "schema" / "config.schema.yaml").read_text())
    entry = schema["properties"]["evaluation"]["properties"]["benchmarks"]["additionalProperties"]
    branches = {branch["if"]["properties"]["kind"]["const"]: branch["then"] for branch in entry["allOf"]}
    assert set(branches) == set(spec.KINDS)
    for kind, branch in branches.items():
        assert tuple(branch["propertyNames"]["enum"]) == spec.CONFIG_KEYS[kind]
        assert branch["properties"].get("max_out_len", {}).get("default") == spec.DEFAULT_MAX_OUT_LEN[kind]
    custom = branches["custom"]["properties"]
    assert custom["metric"]["enum"] == list(spec.CUSTOM_METRICS)
    assert custom["metric"]["default"] == spec.DEFAULT_METRIC
    assert custom["prompt"]["default"] == spec.DEFAULT_PROMPT
