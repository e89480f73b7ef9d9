"""The OpenCompass run configuration, the results parser and scores.csv, without OpenCompass."""

import json
import subprocess
import sys

import pytest

from shadowft.evaluation.__main__ import main
from shadowft.evaluation.models import MODEL_ABBR, ModelOptions, model_config
from shadowft.evaluation.results import SCORES_COLUMNS, EvaluationError, collect_results, read_scores, write_scores
from shadowft.evaluation.run import evaluate
from shadowft.evaluation.run_config import EXACT_PROMPT_META_TEMPLATE, run_config
from shadowft.evaluation.spec import DEFAULT_MAX_OUT_LEN, BenchmarkSpec


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "eval.jsonl"
    records = [{"question": "Shift: a b", "answer": "b c"}, {"question": "Shift: c", "answer": "d"}]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture
def custom(qa_file):
    return BenchmarkSpec.from_mapping(
        {"name": "demo_task", "kind": "custom", "path": str(qa_file), "metric": "exact_match", "max_out_len": 32}
    )


# --- the benchmark spec ------------------------------------------------------------------


def test_custom_defaults_are_filled(qa_file):
    spec = BenchmarkSpec.from_mapping({"name": "t", "kind": "custom", "path": str(qa_file)})
    assert spec.metric == "exact_match"
    assert spec.max_out_len == DEFAULT_MAX_OUT_LEN["custom"]
    assert spec.prompt == "{question}"


def test_a_spec_round_trips_through_its_json_form(custom):
    assert BenchmarkSpec.from_mapping(json.loads(json.dumps(custom.as_dict()))) == custom


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "lm_eval"}, "benchmark.kind: 'lm_eval'"),
        ({"name": None}, "benchmark.name"),
        ({"name": "a/b"}, "benchmark.name: 'a/b'"),
        ({"metric": "bleu"}, "benchmark.metric: 'bleu'"),
        ({"max_out_len": 0}, "benchmark.max_out_len"),
        ({"max_out_len": True}, "benchmark.max_out_len"),
        ({"prompt": "Answer: {q}"}, "benchmark.prompt"),
        ({"dataset": "demo_task"}, "unknown key(s) dataset"),
        ({"config": "gsm8k_gen"}, "unknown key(s) config"),
    ],
)
def test_bad_benchmark_is_rejected_naming_the_key(custom, change, message):
    with pytest.raises(ValueError) as error:
        BenchmarkSpec.from_mapping({**custom.as_dict(), **change})
    assert message in str(error.value)


def test_benchmark_must_be_a_mapping():
    with pytest.raises(TypeError, match="expected a mapping"):
        BenchmarkSpec.from_mapping(["demo_task"])


def test_missing_keys_are_named():
    with pytest.raises(ValueError, match="missing key.*path"):
        BenchmarkSpec.from_mapping({"name": "t", "kind": "custom"})
    with pytest.raises(ValueError, match="missing key.*config"):
        BenchmarkSpec.from_mapping({"name": "gsm8k", "kind": "opencompass"})


def test_opencompass_spec_takes_a_config_name():
    spec = BenchmarkSpec.from_mapping(
        {"name": "gsm8k", "kind": "opencompass", "config": "gsm8k_gen", "max_out_len": 512}
    )
    assert spec.as_dict() == {"name": "gsm8k", "kind": "opencompass", "config": "gsm8k_gen", "max_out_len": 512}
    with pytest.raises(ValueError, match="benchmark.config"):
        BenchmarkSpec.from_mapping({"name": "gsm8k", "kind": "opencompass", "config": "../gsm8k_gen"})
    with pytest.raises(ValueError, match="unknown key.*prompt"):
        BenchmarkSpec.from_mapping(
            {"name": "gsm8k", "kind": "opencompass", "config": "gsm8k_gen", "prompt": "{question}"}
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "holds no questions"),
        ('{"question": "q", "answer": "a"}\n\n', "line 2: empty line"),
        ('{"question": "q", "answer": "a"}\nnot json\n', "line 2: not JSON"),
        ('{"question": "q"}\n', "line 1: expected"),
        ('{"question": "q", "answer": 3}\n', "line 1: expected"),
        ('["q", "a"]\n', "line 1: expected"),
    ],
)
def test_bad_eval_file_is_rejected_naming_the_line(tmp_path, content, message):
    path = tmp_path / "eval.jsonl"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        run_config(tmp_path, BenchmarkSpec.from_mapping({"name": "t", "kind": "custom", "path": str(path)}))


def test_missing_eval_file_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="is not a file"):
        run_config(
            tmp_path,
            BenchmarkSpec.from_mapping({"name": "t", "kind": "custom", "path": str(tmp_path / "absent.jsonl")}),
        )


# --- the context check -------------------------------------------------------------------


def test_a_refusal_names_the_limit_the_datasets_and_the_largest_length_that_fits(tmp_path):
    from shadowft.evaluation.context import ContextWindow, DatasetFit, RunFit

    window = ContextWindow(16384, 4096, "max_position_embeddings in m/config.json")
    fit = RunFit(
        window.max_seq_len,
        (DatasetFit("gsm8k", 1319, 900, 512, 0), DatasetFit("math", 5000, 1200, 4096, 7)),
    )
    fit.write(tmp_path / "fit.json")
    assert RunFit.read(tmp_path / "fit.json") == fit and not fit.fits
    assert fit.refusal("mix", window) == (
        "benchmark mix: its prompts and answers do not fit the model's context, max_seq_len 4096: the paper's "
        "16384 capped by the model's 4096 positions (max_position_embeddings in m/config.json); refused before "
        "OpenCompass starts (a backend would cut the prompt or the answer):\n"
        "  dataset math: 5000 prompts, the longest 1200 tokens + max_out_len 4096 = 5296 of max_seq_len 4096: "
        "7 of them do not fit\n"
        "lower its max_out_len (evaluation.benchmarks.mix.max_out_len) to at most 2896, or evaluate a model with a "
        "longer context"
    )
    assert fit.lines()[0] == (
        "dataset gsm8k: 1319 prompts, the longest 900 tokens + max_out_len 512 = 1412 of max_seq_len 4096: all fit"
    )


# --- the run configuration ---------------------------------------------------------------


def test_custom_run_config(tmp_path, custom, qa_file):
    config = run_config(tmp_path / "model", custom, ModelOptions(num_gpus=0, batch_size=4))
    assert json.loads(json.dumps(config)) == config, "the configuration is plain JSON"
    (model,) = config["models"]
    assert model["type"] == "opencompass.models.HuggingFacewithChatTemplate"
    assert model["abbr"] == MODEL_ABBR
    assert model["path"] == str((tmp_path / "model").resolve())
    assert model["model_kwargs"]["trust_remote_code"] is False
    assert model["tokenizer_kwargs"]["trust_remote_code"] is False
    assert model["generation_kwargs"] == {"do_sample": False, "num_beams": 1}
    assert model["run_cfg"] == {"num_gpus": 0}
    assert model["batch_size"] == 4
    assert model["max_seq_len"] == 16384, "the paper's window: the model folder states no context length"
    assert model["meta_template"] == EXACT_PROMPT_META_TEMPLATE

    (dataset,) = config["datasets"]
    assert dataset["abbr"] == "demo_task"
    assert dataset["path"] == str(qa_file.resolve())
    assert dataset["reader_cfg"] == {"input_columns": ["question"], "output_column": "answer"}
    assert dataset["infer_cfg"]["prompt_template"]["template"] == {"round": [{"role": "HUMAN", "prompt": "{question}"}]}
    assert dataset["infer_cfg"]["inferencer"]["max_out_len"] == 32
    assert dataset["eval_cfg"]["evaluator"]["type"].endswith(".AccEvaluator")
    assert dataset["eval_cfg"]["pred_postprocessor"] == {"type": "builtins.str.strip"}
    assert dataset["eval_cfg"]["dataset_postprocessor"] == {"type": "builtins.str.strip"}


def test_custom_prompt_template(tmp_path, custom):
    config = run_config(tmp_path, BenchmarkSpec.from_mapping({**custom.as_dict(), "prompt": "Q: {question}\nA:"}))
    assert (
        config["datasets"][0]["infer_cfg"]["prompt_template"]["template"]["round"][0]["prompt"] == "Q: {question}\nA:"
    )


def test_model_options():
    model = model_config(
        "m", ModelOptions(num_gpus=2, batch_size=16, max_seq_len=4096, dtype="bfloat16", trust_remote_code=True)
    )
    assert model["run_cfg"] == {"num_gpus": 2}
    assert model["batch_size"] == 16
    assert model["max_seq_len"] == 4096
    assert model["model_kwargs"] == {"trust_remote_code": True, "torch_dtype": "bfloat16"}
    assert model["tokenizer_kwargs"] == {"trust_remote_code": True}
    assert "meta_template" not in model, "OpenCompass's own prompt format unless a benchmark asks"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"dtype": "fp8"}, r"^dtype: 'fp8' is not one of auto, float32, bfloat16, float16$"),
        ({"num_gpus": -1}, r"^num_gpus must be >= 0 and batch_size >= 1 \(got -1, 32\)$"),
        ({"batch_size": 0}, r"^num_gpus must be >= 0 and batch_size >= 1 \(got 0, 0\)$"),
    ],
)
def test_bad_model_options(options, message):
    with pytest.raises(ValueError, match=message):
        model_config("m", ModelOptions(**options))


def test_evaluate_rejects_a_missing_model_before_running(tmp_path, custom):
    with pytest.raises(ValueError, match="is not a directory"):
        evaluate(tmp_path / "absent", custom, tmp_path / "work", tmp_path / "scores.csv")
    assert not (tmp_path / "work").exists()


def test_standard_benchmark_needs_the_data_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("COMPASS_DATA_CACHE", raising=False)
    spec = BenchmarkSpec.from_mapping({"name": "gsm8k", "kind": "opencompass", "config": "gsm8k_gen"})
    with pytest.raises(ValueError, match="COMPASS_DATA_CACHE"):
        evaluate(tmp_path, spec, tmp_path / "work", tmp_path / "scores.csv")


# --- results of a run folder -------------------------------------------------------------


def _fake_run(run_dir, abbr, results=None, predictions=2):
    """Write a dataset's outputs the way OpenCompass lays them out in its run folder."""
    if results is not None:
        path = run_dir / "results" / MODEL_ABBR / f"{abbr}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(results if isinstance(results, str) else json.dumps(results))
    if predictions is not None:
        path = run_dir / "predictions" / MODEL_ABBR / f"{abbr}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        records = {
            str(i): {"origin_prompt": [{"role": "HUMAN", "prompt": f"q{i}"}], "prediction": f"p{i}", "gold": f"g{i}"}
            for i in range(predictions)
        }
        path.write_text(json.dumps(records))


def test_collect_custom_results(tmp_path):
    _fake_run(tmp_path, "demo_task", {"accuracy": 50.0, "details": {"0": {"predictions": "p0"}}})
    rows, predictions = collect_results(tmp_path, "demo_task", ["demo_task"], metric_names={"accuracy": "exact_match"})
    assert rows == [
        {"benchmark": "demo_task", "dataset": "demo_task", "metric": "exact_match", "score": 50.0, "num_examples": 2}
    ]
    assert predictions["demo_task"]["1"]["prediction"] == "p1"


def test_collect_standard_results_keeps_every_numeric_metric(tmp_path):
    _fake_run(
        tmp_path,
        "mmlu_a",
        {"accuracy": 40, "naive_average": 41.5, "details": [], "type": "GEN", "flag": True},
        predictions=3,
    )
    _fake_run(tmp_path, "mmlu_b", {"score": 10.0}, predictions=1)
    rows, predictions = collect_results(tmp_path, "mmlu", ["mmlu_a", "mmlu_b"])
    assert [(row["dataset"], row["metric"], row["score"], row["num_examples"]) for row in rows] == [
        ("mmlu_a", "accuracy", 40.0, 3),
        ("mmlu_a", "naive_average", 41.5, 3),
        ("mmlu_b", "score", 10.0, 1),
    ]
    assert set(predictions) == {"mmlu_a", "mmlu_b"}


def test_failed_task_is_an_error_naming_dataset_and_log(tmp_path):
    # What a failed inference leaves while OpenCompass still exits 0: logs and a summary
    # with "-", but neither predictions nor results for the dataset.
    (tmp_path / "logs" / "infer" / MODEL_ABBR).mkdir(parents=True)
    (tmp_path / "logs" / "infer" / MODEL_ABBR / "demo_task.out").write_text("OSError: no model.safetensors\n")
    (tmp_path / "summary").mkdir()
    (tmp_path / "summary" / "summary_20261125_000000.csv").write_text(
        "dataset,version,metric,mode,model\ndemo_task,-,-,-,-\n"
    )
    log_path = tmp_path / "opencompass.log"
    with pytest.raises(EvaluationError) as error:
        collect_results(tmp_path, "demo_task", ["demo_task"], log_path=log_path)
    assert "dataset demo_task" in str(error.value)
    assert str(log_path) in str(error.value)


def test_one_failed_dataset_of_several_is_named(tmp_path):
    _fake_run(tmp_path, "bbh_a", {"score": 10.0})
    _fake_run(tmp_path, "bbh_b", results=None, predictions=None)
    with pytest.raises(EvaluationError, match="dataset bbh_b"):
        collect_results(tmp_path, "bbh", ["bbh_a", "bbh_b"])


def test_results_holding_an_error(tmp_path):
    _fake_run(tmp_path, "demo_task", {"error": "predictions and references have different length"})
    with pytest.raises(EvaluationError, match="could not score dataset demo_task: predictions and references"):
        collect_results(tmp_path, "demo_task", ["demo_task"])


@pytest.mark.parametrize(
    ("results", "message"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "is not a JSON object"),
        ({"details": {}}, "no numeric score"),
        ({"accuracy": float("nan")}, "no numeric score"),
    ],
)
def test_unusable_results(tmp_path, results, message):
    _fake_run(tmp_path, "demo_task", results)
    with pytest.raises(EvaluationError, match=message):
        collect_results(tmp_path, "demo_task", ["demo_task"])


def test_requested_metric_missing(tmp_path):
    _fake_run(tmp_path, "demo_task", {"score": 10.0})
    with pytest.raises(EvaluationError, match="has no accuracy"):
        collect_results(tmp_path, "demo_task", ["demo_task"], metric_names={"accuracy": "exact_match"})


def test_missing_predictions(tmp_path):
    _fake_run(tmp_path, "demo_task", {"accuracy": 100.0}, predictions=None)
    with pytest.raises(EvaluationError, match="predictions of dataset demo_task"):
        collect_results(tmp_path, "demo_task", ["demo_task"])


# --- scores.csv --------------------------------------------------------------------------


def test_scores_round_trip(tmp_path):
    rows = [
        {"benchmark": "mmlu", "dataset": "mmlu_a", "metric": "accuracy", "score": 41.25, "num_examples": 3},
        {"benchmark": "mmlu", "dataset": "mmlu_b", "metric": "accuracy", "score": 0.0, "num_examples": 1},
    ]
    path = tmp_path / "out" / "scores.csv"
    write_scores(rows, path)
    assert path.read_text().splitlines()[0] == ",".join(SCORES_COLUMNS)
    assert read_scores(path) == rows
    assert [p.name for p in path.parent.iterdir()] == ["scores.csv"], "no temporary file left behind"


def test_read_scores_rejects_other_columns(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("dataset,score\nx,1\n")
    with pytest.raises(ValueError, match="columns"):
        read_scores(path)


def test_read_scores_names_the_bad_line(tmp_path):
    path = tmp_path / "scores.csv"
    path.write_text("benchmark,dataset,metric,score,num_examples\nb,d,m,1.5,2\nb,d,m,-,2\n")
    with pytest.raises(ValueError, match="line 3"):
        read_scores(path)


# --- the command line and the module's imports -------------------------------------------


def test_cli_reports_a_bad_benchmark(tmp_path, capsys, qa_file):
    benchmark = json.dumps({"name": "t", "kind": "custom", "path": str(qa_file), "metric": "bleu"})
    code = main(
        [
            "evaluate",
            "--model",
            str(tmp_path),
            "--benchmark-json",
            benchmark,
            "--work-dir",
            str(tmp_path / "w"),
            "--scores",
            str(tmp_path / "s.csv"),
        ]
    )
    assert code == 1
    assert "benchmark.metric: 'bleu'" in capsys.readouterr().err


def test_cli_reads_the_benchmark_from_a_file(tmp_path, capsys, custom):
    spec_file = tmp_path / "benchmark.json"
    spec_file.write_text(json.dumps(custom.as_dict()))
    code = main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "absent"),
            "--benchmark-json",
            str(spec_file),
            "--work-dir",
            str(tmp_path / "w"),
            "--scores",
            str(tmp_path / "s.csv"),
        ]
    )
    assert code == 1
    assert "is not a directory" in capsys.readouterr().err, "the spec was read; the model check failed next"


def test_cli_rejects_an_unreadable_benchmark(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path),
                "--benchmark-json",
                str(tmp_path / "absent.json"),
                "--work-dir",
                str(tmp_path),
                "--scores",
                str(tmp_path / "s.csv"),
            ]
        )
    assert exit_.value.code == 2
    assert "absent.json" in capsys.readouterr().err


def test_cli_rejects_a_benchmark_that_is_not_an_object(tmp_path, capsys):
    spec_file = tmp_path / "benchmark.json"
    spec_file.write_text('["demo_task"]')
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "evaluate",
                "--model",
                str(tmp_path),
                "--benchmark-json",
                str(spec_file),
                "--work-dir",
                str(tmp_path),
                "--scores",
                str(tmp_path / "s.csv"),
            ]
        )
    assert exit_.value.code == 2
    assert "not a JSON object" in capsys.readouterr().err


def test_module_imports_only_the_standard_library():
    # The eval environment imports this module from the repository root, without the
    # core environment's packages; OpenCompass itself loads only when a run needs it.
    code = (
        "import sys, shadowft.evaluation\n"
        "heavy = {'torch', 'transformers', 'opencompass', 'mmengine', 'pandas', 'yaml', 'numpy'}\n"
        "print(sorted(heavy & {name.split('.')[0] for name in sys.modules}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
