"""The benchmark catalog, its selection in the config, the backends' model entries and the plan, without OpenCompass."""

import copy
import json
import re
import sys

import pytest
import yaml
from conftest import ROOT, snakemake
from scoring_fixtures import (
    AUTHORS_AVERAGE,
    AUTHORS_GROUP_NAMES,
    EXPECTED_AVERAGE,
    EXPECTED_BENCHMARKS,
    EXPECTED_GROUPS,
    authors_results,
    authors_scores,
    subset_scores,
)

from shadowft.evaluation.benchmarks import (
    AVERAGED_GROUPS,
    CATALOG,
    GROUPS,
    Headline,
    Scoring,
    benchmark_groups,
    expand_evaluation,
    scoring,
)
from shadowft.evaluation.context import PAPER_MAX_SEQ_LEN, context_window
from shadowft.evaluation.models import BACKEND_ENVS, BACKENDS, ModelOptions, batch_size_for, model_config
from shadowft.evaluation.run_config import run_config
from shadowft.evaluation.spec import PAPER_MAX_OUT_LEN, BenchmarkSpec
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


def test_the_papers_table_in_the_docs_names_each_benchmarks_config_and_kept_datasets():
    lines = [line for line in (ROOT / "docs" / "paper.md").read_text().splitlines() if line.startswith("| `")]
    rows = {cells[0].strip("`"): cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines)}
    assert set(rows) == set(CATALOG)
    for name, benchmark in CATALOG.items():
        config, score = rows[name][1], rows[name][5]
        assert config == f"`{benchmark.config.removeprefix('opencompass.configs.datasets.')}`", name
        assert all(f"`{dataset}`" in score for dataset in benchmark.headline.datasets), name


# --- selection in the config -------------------------------------------------------------


def test_groups_expand_into_benchmarks_with_the_paper_defaults():
    evaluation = expand_evaluation({"groups": ["code3"], "benchmarks": {"humaneval": {"kind": "opencompass"}}})
    assert sorted(evaluation["benchmarks"]) == ["humaneval", "humaneval_plus", "livecodebench"]
    assert evaluation["benchmarks"]["livecodebench"] == {
        "kind": "opencompass",
        "config": "opencompass.configs.datasets.livecodebench.livecodebench_gen_a4f90b",
        "variable": "LCB_datasets",
    }


def test_a_benchmark_keeps_its_own_settings():
    evaluation = expand_evaluation(
        {"groups": ["math7"], "benchmarks": {"gsm8k": {"kind": "opencompass", "max_out_len": 8}}}
    )
    assert evaluation["benchmarks"]["gsm8k"]["max_out_len"] == 8
    assert evaluation["benchmarks"]["gsm8k"]["config"] == "opencompass.configs.datasets.gsm8k.gsm8k_gen_1d7fe4"
    # Without one, each dataset keeps its config's own length (tests/test_benchmarks_opencompass.py).
    assert "max_out_len" not in evaluation["benchmarks"]["math"]
    assert BenchmarkSpec.from_mapping({"name": "math", **evaluation["benchmarks"]["math"]}).max_out_len is None


@pytest.mark.bad_input("benchmark", caught="plan")
def test_another_opencompass_config_needs_its_module_and_variable():
    with pytest.raises(ValueError, match=r"evaluation.benchmarks.piqa: .*needs config and variable"):
        expand_evaluation({"benchmarks": {"piqa": {"kind": "opencompass"}}})
    spec = {"kind": "opencompass", "config": "opencompass.configs.datasets.piqa.piqa_gen", "variable": "piqa_datasets"}
    assert expand_evaluation({"benchmarks": {"piqa": dict(spec)}})["benchmarks"]["piqa"] == spec


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


# --- the report's numbers: headlines, group means, the Average ----------------------------


def write_variant(tmp_path, scores, pair="p", variant="instruct"):
    """One variant's scores.csv per benchmark, and the report's records of them."""
    from shadowft.evaluation.results import write_scores

    records = []
    for benchmark, rows in scores.items():
        path = tmp_path / variant / benchmark / "scores.csv"
        write_scores(
            [{"benchmark": benchmark, "dataset": d, "metric": m, "score": v, "num_examples": 1} for d, m, v in rows],
            path,
        )
        dimensions = dict.fromkeys(("stage", "tuning", "learning_rate", "lora_rank", "seed", "alpha"))
        records.append({"pair": pair, "variant": variant, "benchmark": benchmark, "scores": path, **dimensions})
    return records


def test_the_tables_follow_the_authors_summarizer(tmp_path):
    from shadowft.report import pair_tables, summarize

    config = demo_config()
    config["evaluation"].update(groups=["math7", "code3", "reasoning9", "ifeval"], benchmarks={})
    rule = scoring(validate_config(config)["evaluation"])
    assert rule.averaged == AVERAGED_GROUPS == ("math7", "code3", "reasoning9")
    assert set(rule.headlines) == set(CATALOG), "every catalog benchmark runs its own config: the authors' rule"
    assert Scoring.from_dict(json.loads(json.dumps(rule.as_dict()))) == rule, "the report's JSON round-trips"

    frame = summarize(write_variant(tmp_path, subset_scores()), tmp_path / "s.csv", tmp_path / "s.md", scoring=rule)
    (table,) = pair_tables(frame, "p", rule)
    cells = {column: cell.mean for column, cell in table.row("instruct").cells.items()}

    # By hand (tests/scoring_fixtures.py) ...
    assert {b: cells[b] for b in EXPECTED_BENCHMARKS} == pytest.approx(EXPECTED_BENCHMARKS)
    assert {g: cells[f"{g} avg"] for g in EXPECTED_GROUPS} == pytest.approx(EXPECTED_GROUPS)
    assert cells["Average"] == pytest.approx(EXPECTED_AVERAGE)
    # ... and by the authors' summarizer, on the same subsets under their names.
    authors = authors_scores(authors_results(subset_scores()))
    assert {g: cells[f"{g} avg"] for g in AUTHORS_GROUP_NAMES} == pytest.approx(
        {g: authors[name] for g, name in AUTHORS_GROUP_NAMES.items()}
    )
    assert cells["Average"] == pytest.approx(authors[AUTHORS_AVERAGE])
    for benchmark, group in [("mmlu", "mmlu"), ("mmlu_pro", "mmlu_pro"), ("bbh", "bbh"), ("bbh_0shot", "bbh_0shot")]:
        assert cells[benchmark] == pytest.approx(authors[group]), benchmark
    assert cells["livecodebench"] == pytest.approx(authors["LiveCodeBench"])

    caption = next(line for line in (tmp_path / "s.md").read_text().splitlines() if line.startswith("Table 1"))
    assert (
        "Average: unweighted mean of math7 avg, code3 avg, reasoning9 avg, the Shadow-FT authors' overall "
        "average (their OpenCompass summarizer chat_core_shadow_2505); ifeval avg not in it." in caption
    )
    assert "accuracy, mean over its 57 datasets (mmlu)" in caption
    assert "accuracy of winogrande_prompt_1 (1 of its 3 datasets) (winogrande)" in caption
    assert "pass@1, mean over its 3 datasets (livecodebench)" in caption
    assert "Prompt-level-strict-accuracy (ifeval)" in caption


def test_the_papers_qwen3_4b_instruct_average():
    # The paper's Qwen3-4B Instruct: Math 73.8, Code 66.4, General 63.7, Average 68.0.
    means = {"math7": 73.8, "code3": 66.4, "reasoning9": 63.7}
    headline = Headline("accuracy", ("x",))
    values = {group: headline.score(group, {("x", "accuracy"): mean}) for group, mean in means.items()}
    assert round(sum(values.values()) / 3, 1) == 68.0


def test_a_headline_never_averages_fewer_datasets_than_it_keeps():
    scores = {("winogrande_prompt_2", "accuracy"): 10.0}
    with pytest.raises(ValueError, match="benchmark winogrande: its score keeps dataset winogrande_prompt_1"):
        CATALOG["winogrande"].headline.score("winogrande", scores)
    with pytest.raises(ValueError, match="benchmark ifeval: dataset IFEval has no Prompt-level-strict-accuracy"):
        CATALOG["ifeval"].headline.score("ifeval", {("IFEval", "Inst-level-loose-accuracy"): 1.0})


def test_another_config_of_a_catalog_benchmark_takes_the_plain_rule():
    config = demo_config()
    config["evaluation"]["benchmarks"] = {
        "winogrande": {"kind": "opencompass", "config": "opencompass.configs.datasets.winogrande.winogrande_gen"}
    }
    rule = scoring(validate_config(config)["evaluation"])
    assert rule.headline("winogrande") == Headline(), "the authors' rule is for their config only"
    assert rule.groups == {"reasoning9": ("winogrande",)} and rule.averaged == ("reasoning9",)


def test_a_group_selected_in_part_says_so(tmp_path):
    from shadowft.report import summarize

    config = demo_config()
    config["evaluation"]["benchmarks"] = {"gsm8k": {"kind": "opencompass"}, "svamp": {"kind": "opencompass"}}
    rule = scoring(validate_config(config)["evaluation"])
    scores = {name: subset_scores()[name] for name in ("gsm8k", "svamp")}
    summarize(write_variant(tmp_path, scores), tmp_path / "s.csv", tmp_path / "s.md", scoring=rule)
    markdown = (tmp_path / "s.md").read_text()
    assert (
        "math7 avg: unweighted mean of the group's benchmark scores; math7 avg over gsm8k, svamp only (2 of its 7)."
        in markdown
    )
    assert "Average: unweighted mean of math7 avg, the Shadow-FT authors' overall average" in markdown
    assert "| Instruct | 80.0 | 85.0 | 82.5 | 82.5 |" in markdown


def test_custom_benchmarks_of_two_roles_have_no_average(tmp_path):
    """The demo's benchmarks: shares of questions, partial credit beside them, and a role each, so no
    Average mixes the task with the skills kept; without roles they average every benchmark."""
    from shadowft.report import summarize

    config = validate_config(demo_config())
    rule = scoring(config["evaluation"])
    names = ("demo_task", "demo_chat")
    assert rule.headlines == {name: Headline("exact_match", proportion=True) for name in names}
    assert rule.partial_credit == dict.fromkeys(names, "token_accuracy")
    assert rule.roles == {"demo_task": "task", "demo_chat": "retention"} and not rule.has_average
    scores = {"demo_task": [("demo_task", "exact_match", 20.0)], "demo_chat": [("demo_chat", "exact_match", 50.0)]}
    summarize(write_variant(tmp_path / "roles", scores), tmp_path / "s.csv", tmp_path / "s.md", scoring=rule)
    markdown = (tmp_path / "s.md").read_text()
    assert "No Average: the benchmarks measure different roles" in markdown
    assert "| Instruct | 20.0 | 50.0 |" in markdown

    for name in names:
        del config["evaluation"]["benchmarks"][name]["role"]
    rule = scoring(config["evaluation"])
    assert rule.roles == {} and rule.has_average
    summarize(write_variant(tmp_path / "none", scores), tmp_path / "s.csv", tmp_path / "s.md", scoring=rule)
    markdown = (tmp_path / "s.md").read_text()
    assert "Average: unweighted mean of every benchmark's score." in markdown
    assert "| Instruct | 20.0 | 50.0 | 35.0 |" in markdown


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
        "max_seq_len": 8192,
        "batch_size": 128,
        "run_cfg": {"num_gpus": 4},
    }


def test_lmdeploy_entry_takes_the_jobs_gpus():
    model = model_config("m", ModelOptions(backend="lmdeploy", num_gpus=2))
    assert model == {
        "type": "opencompass.models.TurboMindModelwithChatTemplate",
        "abbr": "model",
        "path": model["path"],
        "backend": "turbomind",
        "engine_config": {"tp": 2, "max_batch_size": 64, "session_len": PAPER_MAX_SEQ_LEN},
        # The authors' gen_config (opencompass/eval_shadow_202505.py)
        "gen_config": {"top_k": 1, "temperature": 0, "top_p": 0.9, "max_new_tokens": 4096},
        "max_out_len": PAPER_MAX_OUT_LEN,
        "max_seq_len": PAPER_MAX_SEQ_LEN,
        "batch_size": 64,
        "run_cfg": {"num_gpus": 2},
    }


def write_model_config(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


# (config.json, max_seq_len asked for) -> the window every backend gets: the paper's 16384 capped by the model
WINDOWS = [
    ({"max_position_embeddings": 40960}, None, 16384),  # Qwen3-4B
    ({"max_position_embeddings": 4096}, None, 4096),  # Yi-1.5-9B: capped
    ({"text_config": {"max_position_embeddings": 131072}}, None, 16384),  # Gemma-3: the multimodal wrapper's
    ({"text_config": {"max_position_embeddings": 256}}, None, 256),
    ({"max_position_embeddings": 256}, 8192, 256),  # the demo's, whatever is asked
    ({"max_position_embeddings": 40960}, 8192, 8192),
    ({}, None, 16384),  # a config.json without it: the paper's
]


@pytest.mark.parametrize(("config", "requested", "expected"), WINDOWS)
def test_every_backends_entry_gets_the_papers_window_capped_by_the_model(tmp_path, config, requested, expected):
    model_dir = write_model_config(tmp_path / "model", **config)
    entries = {
        backend: model_config(model_dir, ModelOptions(backend=backend, num_gpus=1, max_seq_len=requested))
        for backend in BACKENDS
    }
    assert {backend: entry["max_seq_len"] for backend, entry in entries.items()} == dict.fromkeys(BACKENDS, expected)
    assert entries["vllm"]["model_kwargs"]["max_model_len"] == expected
    assert entries["lmdeploy"]["engine_config"]["session_len"] == expected
    # Greedy everywhere, answers of up to 4096 tokens where a dataset sets none.
    assert entries["hf"]["generation_kwargs"] == {"do_sample": False, "num_beams": 1}
    assert entries["vllm"]["generation_kwargs"] == {"temperature": 0}
    assert entries["lmdeploy"]["gen_config"]["top_k"] == 1
    assert {entry["max_out_len"] for entry in entries.values()} == {4096}
    window = context_window(model_dir, requested)
    assert window.max_seq_len == expected
    if expected < (requested or PAPER_MAX_SEQ_LEN):
        assert f"capped by the model's {expected} positions" in window.describe()
        assert str(model_dir / "config.json") in window.describe()


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
    for engine in ("vllm", "lmdeploy"):
        assert any(
            line.startswith(f"{engine}==") for line in build_venvs.pip_requirements(ROOT / "envs" / f"{engine}.yaml")
        )


# --- the plan ----------------------------------------------------------------------------


@pytest.mark.slow
def test_dry_run_plans_one_evaluation_per_variant_and_paper_benchmark(tmp_path):
    config = demo_config()
    config["evaluation"]["groups"] = ["math7", "code3", "reasoning9"]
    config_file = tmp_path / "paper-benchmarks.yaml"
    config_file.write_text(yaml.safe_dump(config))
    output = snakemake(tmp_path, "-n", "--cores", "2", "--configfile", str(config_file)).stdout

    # An evaluation's outputs start with its scores.csv (then its predictions and hardware).
    planned = re.findall(r"^\s*output: (\S+/scores\.csv)(?:,|$)", output, re.MULTILINE)
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
