"""The benchmark catalog, its selection in the config, the backends' model entries and the plan, without OpenCompass."""

import copy
import re
import sys

import pytest
import yaml
from conftest import ROOT, snakemake

from shadowft.evaluation.benchmarks import (
    CATALOG,
    GROUPS,
    PAPER_MAX_OUT_LEN,
    benchmark_groups,
    expand_evaluation,
)
from shadowft.evaluation.models import BACKEND_ENVS, BACKENDS, ModelOptions, batch_size_for, model_config
from shadowft.evaluation.run_config import run_config
from shadowft.evaluation.spec import BenchmarkSpec
from shadowft.workflow.config import ConfigError, validate_config
from shadowft.workflow.sweep import variants

# The paper's benchmarks (docs/paper.md), by group, as its tables name them.
PAPER_GROUPS = {
    "math7": ["MATH", "MATH-500", "Minerva-math", "GSM8K", "GSM8K 0-shot", "AIME2024", "SVAMP"],
    "code3": ["HumanEval", "HumanEval+", "LiveCodeBench"],
    "reasoning9": [
        "MMLU",
        "MMLU-Pro",
        "Winogrande",
        "DROP",
        "ARC-c",
        "BBH",
        "BBH 0-shot",
        "GPQA-diamond",
        "TheoremQA",
    ],
}


def scores_path(pair: str, variant: str, benchmark: str) -> str:
    """Where an evaluation's scores land (the one path literal of these tests)."""
    return f"results/{pair}/eval/{variant}/{benchmark}/scores.csv"


def demo_config() -> dict:
    return yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


# --- the catalog -------------------------------------------------------------------------


def test_catalog_holds_the_paper_benchmarks_and_ifeval():
    titles = {group: [CATALOG[name].title for name in names] for group, names in GROUPS.items()}
    assert titles == {**PAPER_GROUPS, "ifeval": ["IFEval"]}
    assert sum(len(names) for group, names in GROUPS.items() if group != "ifeval") == 19
    assert len(CATALOG) == 20


def test_catalog_runs_generation_configs():
    for benchmark in CATALOG.values():
        assert benchmark.config.rsplit(".", 1)[1].split("_gen")[0] != benchmark.config.rsplit(".", 1)[1], (
            f"{benchmark.name}: {benchmark.config} is not a generation (_gen) config"
        )
        assert benchmark.variable.endswith("_datasets")


# --- selection in the config -------------------------------------------------------------


def test_groups_expand_into_benchmarks_with_the_paper_defaults():
    evaluation = expand_evaluation({"groups": ["code3"], "benchmarks": {"humaneval": {"kind": "opencompass"}}})
    assert sorted(evaluation["benchmarks"]) == ["humaneval", "humaneval_plus", "livecodebench"]
    assert evaluation["benchmarks"]["livecodebench"] == {
        "kind": "opencompass",
        "config": "opencompass.configs.datasets.livecodebench.livecodebench_gen",
        "variable": "LCB_datasets",
        "max_out_len": PAPER_MAX_OUT_LEN,
    }


def test_a_benchmark_keeps_its_own_settings():
    evaluation = expand_evaluation(
        {"groups": ["math7"], "benchmarks": {"gsm8k": {"kind": "opencompass", "max_out_len": 8}}}
    )
    assert evaluation["benchmarks"]["gsm8k"]["max_out_len"] == 8
    assert evaluation["benchmarks"]["gsm8k"]["config"] == "opencompass.configs.datasets.gsm8k.gsm8k_gen"
    assert evaluation["benchmarks"]["math"]["max_out_len"] == PAPER_MAX_OUT_LEN


@pytest.mark.bad_input("benchmark", caught="plan")
def test_another_opencompass_config_needs_its_module_and_variable():
    with pytest.raises(ValueError, match=r"evaluation.benchmarks.piqa: .*needs config and variable"):
        expand_evaluation({"benchmarks": {"piqa": {"kind": "opencompass"}}})
    spec = {"kind": "opencompass", "config": "opencompass.configs.datasets.piqa.piqa_gen", "variable": "piqa_datasets"}
    assert expand_evaluation({"benchmarks": {"piqa": dict(spec)}})["benchmarks"]["piqa"] == {
        **spec,
        "max_out_len": PAPER_MAX_OUT_LEN,
    }


def test_config_with_groups_validates_and_keeps_custom_benchmarks():
    config = demo_config()
    config["evaluation"]["groups"] = ["math7", "ifeval"]
    validate_config(config)
    benchmarks = config["evaluation"]["benchmarks"]
    assert benchmarks["demo_task"]["kind"] == "custom" and benchmarks["demo_task"]["dataset"] == "demo_task"
    assert set(benchmarks) == {"demo_task", "demo_chat", *GROUPS["math7"], "ifeval"}
    assert config["evaluation"]["backend"] == "hf"
    assert config["evaluation"]["data_cache"] == "data/opencompass"
    assert benchmark_groups(config["evaluation"]) == {"math7": list(GROUPS["math7"]), "ifeval": ["ifeval"]}


def test_demo_config_has_no_groups():
    config = validate_config(demo_config())
    assert benchmark_groups(config["evaluation"]) == {}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda e: e.update(groups=["math8"]), "evaluation.groups[0]"),
        (lambda e: e.update(backend="sglang"), "evaluation.backend"),
        (lambda e: e["benchmarks"].update(gsm8k={"kind": "opencompass", "dataset": "demo_task"}), "dataset"),
        (lambda e: e["benchmarks"].update(t={"kind": "custom"}), "evaluation.benchmarks.t"),
        (lambda e: e.update(benchmarks={}), "evaluation: no benchmarks"),
        (lambda e: e.update(dataset_urls={"/gsm8k/": {"md5": "x"}}), "evaluation.dataset_urls./gsm8k/"),
    ],
)
@pytest.mark.bad_input("benchmark", caught="plan")
def test_bad_evaluation_is_rejected_naming_the_key(edit, message):
    config = demo_config()
    edit(config["evaluation"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(config)


# --- group averages ----------------------------------------------------------------------


def test_group_and_overall_averages_count_each_benchmark_once_by_its_first_metric(tmp_path):
    from shadowft.evaluation.results import write_scores
    from shadowft.report import summarize

    scores = {
        "bbh": [("a", "score", 10.0), ("b", "score", 30.0)],  # a benchmark of several datasets: their mean
        "ifeval": [("IFEval", "strict", 50.0), ("IFEval", "loose", 70.0)],  # several metrics: the first
        "gsm8k": [("gsm8k", "accuracy", 90.0)],
    }
    records = []
    for benchmark, rows in scores.items():
        path = tmp_path / "base" / benchmark / "scores.csv"
        write_scores(
            [{"benchmark": benchmark, "dataset": d, "metric": m, "score": v, "num_examples": 2} for d, m, v in rows],
            path,
        )
        dimensions = dict.fromkeys(("stage", "tuning", "learning_rate", "lora_rank", "seed", "alpha"))
        records.append({"pair": "p", "variant": "base", "benchmark": benchmark, "scores": path, **dimensions})
    groups = {"reasoning9": ["bbh"], "ifeval": ["ifeval"], "math7": ["gsm8k"]}
    summarize(records, tmp_path / "summary.csv", tmp_path / "summary.md", benchmark_groups=groups)
    lines = (tmp_path / "summary.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| Variant"))
    base = next(line for line in lines if line.startswith("| Base"))
    cells = dict(zip(header.strip("|").split("|"), base.strip("|").split("|"), strict=True))
    cells = {key.strip(): value.strip() for key, value in cells.items()}
    assert cells["reasoning9 avg"] == "20.0" and cells["ifeval avg"] == "50.0" and cells["math7 avg"] == "90.0"
    assert cells["Average"] == f"{(20.0 + 50.0 + 90.0) / 3:.1f}"


# --- backends ----------------------------------------------------------------------------


def test_hf_entry_is_the_default():
    model = model_config("m", ModelOptions(num_gpus=2))
    assert model["type"] == BACKENDS["hf"] == "opencompass.models.HuggingFacewithChatTemplate"
    assert model["batch_size"] == batch_size_for("hf", 2) == 16
    assert model["run_cfg"] == {"num_gpus": 2}
    assert model_config("m", ModelOptions(num_gpus=0))["batch_size"] == batch_size_for("hf", 0) == 32


def test_vllm_entry_takes_the_jobs_gpus():
    model = model_config("m", ModelOptions(backend="vllm", num_gpus=4, dtype="bfloat16", max_seq_len=8192))
    assert model == {
        "type": "opencompass.models.VLLMwithChatTemplate",
        "abbr": "model",
        "path": model["path"],
        "model_kwargs": {
            "tensor_parallel_size": 4,
            "trust_remote_code": False,
            "dtype": "bfloat16",
            "max_model_len": 8192,
        },
        "generation_kwargs": {"temperature": 0},
        "max_out_len": PAPER_MAX_OUT_LEN,
        "batch_size": 128,
        "max_seq_len": 8192,
        "run_cfg": {"num_gpus": 4},
    }


def test_lmdeploy_entry_takes_the_jobs_gpus():
    model = model_config("m", ModelOptions(backend="lmdeploy", num_gpus=2))
    assert model == {
        "type": "opencompass.models.TurboMindModelwithChatTemplate",
        "abbr": "model",
        "path": model["path"],
        "backend": "turbomind",
        "engine_config": {"tp": 2, "max_batch_size": 64},
        "gen_config": {"top_k": 1, "temperature": 1e-6, "top_p": 0.9, "max_new_tokens": PAPER_MAX_OUT_LEN},
        "max_out_len": PAPER_MAX_OUT_LEN,
        "batch_size": 64,
        "run_cfg": {"num_gpus": 2},
    }


@pytest.mark.parametrize(("gpus", "tensor_parallel"), [(1, 1), (2, 2), (3, 2), (4, 4), (6, 4), (8, 8)])
def test_engines_split_the_model_over_a_power_of_two_gpus(gpus, tensor_parallel):
    vllm = model_config("m", ModelOptions(backend="vllm", num_gpus=gpus))
    lmdeploy = model_config("m", ModelOptions(backend="lmdeploy", num_gpus=gpus))
    assert vllm["model_kwargs"]["tensor_parallel_size"] == tensor_parallel
    assert lmdeploy["engine_config"]["tp"] == tensor_parallel


def test_lmdeploy_refuses_float32():
    with pytest.raises(ValueError, match="TurboMind computes in float16 or bfloat16"):
        model_config("m", ModelOptions(backend="lmdeploy", num_gpus=1, dtype="float32"))
    bfloat16 = model_config("m", ModelOptions(backend="lmdeploy", num_gpus=1, dtype="bfloat16"))
    assert bfloat16["engine_config"]["dtype"] == "bfloat16"


@pytest.mark.parametrize("backend", ["vllm", "lmdeploy"])
def test_gpu_backends_refuse_a_cpu_job(backend):
    with pytest.raises(ValueError, match=f"backend {backend} runs on GPUs only"):
        model_config("m", ModelOptions(backend=backend, num_gpus=0))


def test_custom_benchmark_on_vllm_keeps_its_exact_prompt(tmp_path):
    path = tmp_path / "eval.jsonl"
    path.write_text('{"question": "q", "answer": "a"}\n')
    spec = BenchmarkSpec.from_mapping({"name": "t", "kind": "custom", "path": str(path)})
    config = run_config(tmp_path, spec, ModelOptions(backend="vllm", num_gpus=1))
    assert config["models"][0]["meta_template"]["round"][0] == {"role": "HUMAN", "api_role": "HUMAN"}


def test_each_backend_has_an_env_file_that_says_what_it_serves():
    sys.path.insert(0, str(ROOT / "envs"))
    import build_venvs

    assert build_venvs.DEFAULT_ENVS == ("core", "train", "eval"), "the README's CPU commands build no GPU stack"
    for backend, env in BACKEND_ENVS.items():
        env_file = ROOT / "envs" / f"{env}.yaml"
        requirements = build_venvs.pip_requirements(env_file)
        assert "opencompass==0.5.4" in requirements
        if backend != "hf":
            assert env not in build_venvs.DEFAULT_ENVS
            assert f"evaluation.backend: {backend}" in env_file.read_text()
    assert "vllm==0.33.0" in build_venvs.pip_requirements(ROOT / "envs" / "vllm.yaml")
    assert "lmdeploy==0.18.0" in build_venvs.pip_requirements(ROOT / "envs" / "lmdeploy.yaml")


# --- the plan ----------------------------------------------------------------------------


@pytest.mark.slow
def test_dry_run_plans_one_evaluation_per_variant_and_paper_benchmark(tmp_path):
    config = demo_config()
    config["evaluation"]["groups"] = ["math7", "code3", "reasoning9"]
    config_file = tmp_path / "paper-benchmarks.yaml"
    config_file.write_text(yaml.safe_dump(config))
    output = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(config_file)).stdout

    planned = re.findall(r"^\s*output: (\S+/scores\.csv)$", output, re.MULTILINE)
    expanded = validate_config(copy.deepcopy(config))
    paper = [name for group in ("math7", "code3", "reasoning9") for name in GROUPS[group]]
    assert len(paper) == 19
    expected = {
        scores_path("demo", variant, benchmark)
        for variant in (variant.name for variant in variants(expanded))
        for benchmark in [*paper, "demo_task", "demo_chat"]
    }
    assert sorted(planned) == sorted(expected), "one evaluation job per (variant, benchmark)"
    prefetched = re.findall(r"^\s*output: data/opencompass/manifests/(\S+)\.json$", output, re.MULTILINE)
    assert sorted(prefetched) == sorted(paper), "one prefetch per standard benchmark"


@pytest.mark.bad_input("benchmark", caught="job")
def test_a_missing_evaluator_extra_names_itself_and_the_prefetch_rule(tmp_path):
    from shadowft.evaluation.cache import MissingDataError, check_prefetched, evaluation_environment

    with pytest.raises(MissingDataError) as error:
        check_prefetched("ifeval", [], tmp_path)
    assert f"nltk:punkt_tab: {tmp_path / 'nltk_data' / 'tokenizers' / 'punkt_tab'}" in str(error.value)
    assert "snakemake --until prefetch_benchmarks" in str(error.value)
    (tmp_path / "nltk_data" / "tokenizers" / "punkt_tab").mkdir(parents=True)
    check_prefetched("ifeval", [], tmp_path)
    assert evaluation_environment("ifeval", tmp_path) == {
        "COMPASS_DATA_CACHE": str(tmp_path.resolve()),
        "NLTK_DATA": str(tmp_path.resolve() / "nltk_data"),
    }
    assert evaluation_environment("humaneval_plus", tmp_path)["HUMANEVAL_OVERRIDE_PATH"] == str(
        tmp_path.resolve() / "evalplus" / "humaneval.jsonl"
    )
