"""The catalog against the installed OpenCompass (.venvs/eval): configs, model wrappers, prefetch, offline runs.

No mocks: the configs are located and loaded with mmengine's config loader, the model
entries are bound to the real wrapper classes' signatures, the prefetch downloads (with
OpenCompass's own download, from a file:// zip the test builds) and a GSM8K evaluation
runs through the workflow on the demo's base model, scored by GSM8K's own evaluator.
"""

import hashlib
import json
import os
import subprocess
import zipfile

import pytest
import yaml
from conftest import ROOT, VENVS, snakemake, with_demo_pair
from opencompass_fixtures import evaluate_in_eval_env
from scoring_fixtures import (
    AUTHORS_AVERAGE,
    AUTHORS_GROUP_NAMES,
    AUTHORS_SUMMARY_GROUPS,
    authors_results,
    subset_scores,
)

from shadowft.evaluation.benchmarks import CATALOG, scoring
from shadowft.evaluation.results import read_scores

EVAL_PYTHON = VENVS / "eval" / "bin" / "python"
# Each benchmark's answer length without an override: its config's own, else the paper's 4096, as
# OpenCompass gave the authors' runs (docs/paper.md).
MAX_OUT_LEN = (
    dict.fromkeys(CATALOG, [4096])
    | {name: [512] for name in ("gsm8k", "svamp", "humaneval", "humaneval_plus", "bbh", "bbh_0shot")}
    | {"math": [1024], "minerva_math": [1024]}
)
GSM8K_ROWS = [("What is 2 plus 2?", "2 + 2 = 4\n#### 4"), ("What is 3 plus 4?", "3 + 4 = 7\n#### 7")]
# GSM8K's evaluator reads an answer without a number as "NULL": a gold "NULL" is right for
# any such answer, so against a model that writes no digits these rows score exactly 50.
NO_NUMBER_ROWS = [("What is 2 plus 2?", "2 + 2 = 4\n#### 4"), ("Name no number.", "None.\n#### NULL")]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not EVAL_PYTHON.exists(), reason=f"no eval environment at {EVAL_PYTHON}"),
]


def scores_path(workdir, pair: str, variant: str, benchmark: str):
    """Where the workflow writes one evaluation's scores (the one path literal of these tests)."""
    return workdir / "results" / pair / "eval" / variant / benchmark / "scores.csv"


def manifest_path(cache, benchmark: str):
    """Where prefetch_benchmarks records one benchmark's data under the cache."""
    return cache / "manifests" / f"{benchmark}.json"


def in_eval_env(code: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(EVAL_PYTHON), "-c", code, *args],
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def write_gsm8k(folder, rows=GSM8K_ROWS):
    """GSM8K in OpenCompass's on-disk layout: gsm8k/{train,test}.jsonl of {question, answer}."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        lines = "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in rows)
        (folder / f"{split}.jsonl").write_text(lines)
    return folder


def test_every_benchmark_resolves_to_a_config_of_the_installed_opencompass():
    code = (
        "import json, sys\n"
        "from mmengine.config import Config\n"
        "from shadowft.evaluation.benchmarks import CATALOG\n"
        "from shadowft.evaluation.run_config import _find_dataset_config, opencompass_datasets\n"
        "from shadowft.evaluation.cache import dataset_urls, download_key, required_paths\n"
        "from shadowft.evaluation.spec import benchmark_spec\n"
        "urls, out = dataset_urls(), {}\n"
        "for name, benchmark in CATALOG.items():\n"
        "    path = _find_dataset_config(benchmark.config)\n"
        "    config = Config.fromfile(str(path))\n"
        "    entries = config[benchmark.variable]\n"
        "    datasets = opencompass_datasets(benchmark_spec(name, benchmark.spec()))\n"
        "    assert json.loads(json.dumps(datasets)) == datasets, name  # plain data, as the run config is\n"
        "    out[name] = {\n"
        "        'file': str(path), 'entries': len(entries), 'abbrs': [d['abbr'] for d in datasets],\n"
        "        'types': sorted({str(d['type']) for d in datasets}),\n"
        "        'max_out_len': sorted({d['infer_cfg']['inferencer']['max_out_len'] for d in datasets}),\n"
        "        'evaluators': sorted({d['eval_cfg']['evaluator']['type'] for d in datasets}),\n"
        "        'downloads': {p: download_key(p, urls) for p in required_paths(datasets)},\n"
        "    }\n"
        "print(json.dumps(out))\n"
    )
    found = json.loads(in_eval_env(code).stdout.splitlines()[-1])
    assert set(found) == set(CATALOG)
    for name, entry in found.items():
        benchmark = CATALOG[name]
        assert entry["entries"] >= 1 and len(entry["abbrs"]) == entry["entries"], name
        assert entry["max_out_len"] == MAX_OUT_LEN[name], f"{name}: its answers' length"
        assert entry["file"].endswith(benchmark.config.replace(".", "/") + ".py"), name
        assert all("opencompass.datasets" in kind for kind in entry["types"]), entry["types"]
        assert entry["downloads"], f"{name} reads no data from the cache"
        assert all(entry["downloads"].values()), f"{name}: no DATASETS_URL entry for {entry['downloads']}"
        # The datasets the report's rule keeps are among those the config runs, named as scoring_fixtures names them.
        assert set(benchmark.headline.datasets) <= set(entry["abbrs"]), name
        assert entry["abbrs"] == list(dict.fromkeys(dataset for dataset, _, _ in subset_scores()[name])), name
    assert found["mmlu"]["entries"] == 57 and found["bbh"]["entries"] == 27
    assert found["gpqa_diamond"]["abbrs"] == ["GPQA_diamond"]
    assert found["ifeval"]["evaluators"] == ["shadowft.evaluation.graders.seeded_ifevaluator"], "langdetect seeded"


def test_backend_entries_bind_to_the_opencompass_wrappers():
    # What OpenCompass does with a model entry (opencompass.utils.build.build_model_from_cfg):
    # drop its run keys, then call the class named by `type` with the rest.
    code = (
        "import importlib, inspect, json\n"
        "from shadowft.evaluation.models import BACKENDS, ModelOptions, model_config\n"
        "RUN_KEYS = ('run_cfg', 'max_out_len', 'batch_size', 'abbr', 'summarizer_abbr', 'pred_postprocessor')\n"
        "for backend in BACKENDS:\n"
        "    options = ModelOptions(backend=backend, num_gpus=2, max_seq_len=4096, dtype='bfloat16')\n"
        "    entry = model_config('m', options)\n"
        "    module, _, name = entry['type'].rpartition('.')\n"
        "    cls = getattr(importlib.import_module(module), name)\n"
        "    kwargs = {k: v for k, v in entry.items() if k not in RUN_KEYS and k != 'type'}\n"
        "    inspect.signature(cls.__init__).bind(None, **kwargs)\n"
        "    print(backend, cls.__name__)\n"
    )
    lines = in_eval_env(code).stdout.split("\n")
    assert {line for line in lines if line} == {
        "hf HuggingFacewithChatTemplate",
        "vllm VLLMwithChatTemplate",
        "lmdeploy TurboMindModelwithChatTemplate",
    }


def test_prefetch_rule_fills_the_cache_and_the_manifest(tmp_path):
    # A GSM8K zip as OpenCompass publishes it (gsm8k/ at its root), served from a file:// URL
    # through evaluation.dataset_urls; OpenCompass's own download checks its md5.
    source = write_gsm8k(tmp_path / "source" / "gsm8k")
    archive = tmp_path / "gsm8k.zip"
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(source.iterdir()):
            zipped.write(path, f"gsm8k/{path.name}")
    md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    cache = tmp_path / "cache"
    config["evaluation"].update(
        benchmarks={"gsm8k": {"kind": "opencompass"}},
        data_cache=str(cache),
        dataset_urls={"/gsm8k/": {"url": archive.as_uri(), "md5": md5}},
    )
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    snakemake(workdir, str(manifest_path(cache, "gsm8k")), "--cores", "1", "--configfile", str(workdir / "config.yaml"))

    assert sorted(p.name for p in (cache / "data" / "gsm8k").iterdir()) == ["test.jsonl", "train.jsonl"]
    assert not (cache / "data" / "gsm8k.zip").exists(), "the zip is removed once extracted"
    manifest = json.loads(manifest_path(cache, "gsm8k").read_text())
    (entry,) = manifest["benchmarks"]["gsm8k"]["data"]
    assert entry["path"] == "data/gsm8k" and entry["datasets"] == ["gsm8k"]
    assert (entry["url"], entry["md5"], entry["downloaded"]) == (archive.as_uri(), md5, True)
    assert entry["files"] == {
        f"data/gsm8k/{name}": hashlib.sha256((source / name).read_bytes()).hexdigest()
        for name in ("test.jsonl", "train.jsonl")
    }
    assert manifest["opencompass"] == "0.5.4"


def test_missing_dataset_is_a_clear_error_before_opencompass_starts(tmp_path):
    (tmp_path / "cache").mkdir()
    model = tmp_path / "model"
    model.mkdir()
    benchmark = {"name": "gsm8k", **CATALOG["gsm8k"].spec()}
    result = evaluate_in_eval_env(
        EVAL_PYTHON, ROOT, tmp_path, model, benchmark, "--data-cache", str(tmp_path / "cache")
    )
    assert result.returncode == 1
    assert "benchmark gsm8k: not in the data cache" in result.stderr
    assert f"dataset gsm8k: {tmp_path / 'cache' / 'data' / 'gsm8k'}" in result.stderr
    assert "prefetch_benchmarks" in result.stderr
    assert not (tmp_path / "work").exists(), "OpenCompass never started (no run folder)"


def test_gsm8k_runs_offline_through_the_workflow_on_the_demo(tmp_path, demo_run):
    cache = tmp_path / "cache"
    write_gsm8k(cache / "data" / "gsm8k", NO_NUMBER_ROWS)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["training"]["tunings"] = ["lora"]
    # The demo's 256 positions hold GSM8K's 0-shot prompt, not the catalog's 4-shot one (which the
    # evaluation refuses: tests/test_real_rows.py), so this run names that config.
    zero_shot = {"kind": "opencompass", "config": "gsm8k_0shot_gen_a58960", "variable": "gsm8k_datasets"}
    config["evaluation"].update(
        benchmarks={"gsm8k": {**zero_shot, "max_out_len": 8}}, data_cache=str(cache), variants=["base"]
    )
    workdir = with_demo_pair(tmp_path / "run", demo_run)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config))
    target = scores_path(workdir, "demo", "base", "gsm8k")
    snakemake(workdir, str(target.relative_to(workdir)), "--cores", "2", "--configfile", str(workdir / "config.yaml"))

    predictions = json.loads((target.parent / "predictions.json").read_text())["gsm8k"]
    answers = [record["prediction"].split("Question:")[0] for record in predictions.values()]
    assert len(answers) == 2 and not any(char.isdigit() for answer in answers for char in answer), (
        f"the premise: the demo's base model writes no number ({answers})"
    )
    rows = read_scores(target)
    assert [(row["benchmark"], row["dataset"], row["metric"], row["num_examples"]) for row in rows] == [
        ("gsm8k", "gsm8k", "accuracy", len(NO_NUMBER_ROWS))
    ]
    assert rows[0]["score"] == 50.0
    # OpenCompass's own summary of the same run: summary/summary_<time>.csv in its run folder.
    (summary,) = (target.parent / "opencompass").glob("*/summary/summary_*.csv")
    header, *lines = summary.read_text().splitlines()
    assert header.split(",")[:4] == ["dataset", "version", "metric", "mode"]
    (line,) = [line.split(",") for line in lines if line.startswith("gsm8k,")]
    assert line[2] == "accuracy"
    assert float(line[4]) == pytest.approx(round(rows[0]["score"], 2))
    log = (workdir / "logs" / "evaluate" / "demo" / "base" / "gsm8k.log").read_text()
    assert "Downloading" not in log and "download" not in log.lower()
    manifest = json.loads(manifest_path(cache, "gsm8k").read_text())
    assert set(manifest["benchmarks"]["gsm8k"]["data"][0]["files"]) == {
        "data/gsm8k/test.jsonl",
        "data/gsm8k/train.jsonl",
    }
    assert manifest["benchmarks"]["gsm8k"]["data"][0]["downloaded"] is False, "the test's rows, not a download"


def zip_folder(folder, archive):
    """A zip holding `folder` at its root, as OpenCompass and NLTK publish their data."""
    with zipfile.ZipFile(archive, "w") as zipped:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zipped.write(path, str(path.relative_to(folder.parent)))
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def test_prefetch_fetches_the_evaluators_extras(tmp_path):
    # IFEval: its data zip and NLTK's punkt_tab (what its evaluator loads), both from file:// zips.
    ifeval = tmp_path / "source" / "ifeval"
    ifeval.mkdir(parents=True)
    (ifeval / "input_data.jsonl").write_text(json.dumps({"key": 1, "prompt": "Say hi.", "instruction_id_list": []}))
    punkt = tmp_path / "source" / "punkt_tab" / "english"
    punkt.mkdir(parents=True)
    (punkt / "sent_starters.txt").write_text("The\n")
    urls = {}
    for key, folder in (("/ifeval/", ifeval), ("nltk:punkt_tab", punkt.parent)):
        archive, md5 = zip_folder(folder, tmp_path / f"{folder.name}.zip")
        urls[key] = {"url": archive.as_uri(), "md5": md5}
    cache = tmp_path / "cache"
    code = "import sys; from shadowft.evaluation.__main__ import main; sys.exit(main(sys.argv[1:]))"
    args = ["prefetch", "--benchmarks-json", json.dumps({"ifeval": CATALOG["ifeval"].spec()})]
    args += ["--data-cache", str(cache), "--manifest", str(cache / "manifest.json"), "--urls", json.dumps(urls)]
    in_eval_env(code, *args)

    record = json.loads((cache / "manifest.json").read_text())["benchmarks"]["ifeval"]
    assert [entry["path"] for entry in record["data"]] == ["data/ifeval/input_data.jsonl"]
    assert record["extras"] == {
        "nltk:punkt_tab": {
            "nltk_data/tokenizers/punkt_tab/english/sent_starters.txt": hashlib.sha256(b"The\n").hexdigest()
        }
    }
    assert sorted(p.name for p in (cache / "nltk_data" / "tokenizers").iterdir()) == ["punkt_tab"]


# OpenCompass's own summarizer on the authors' groups (chat_core_shadow_2505), over results files
# written where an OpenCompass run writes them.
SUMMARIZER = """
import json, sys
from mmengine.config import ConfigDict
from opencompass.summarizers import DefaultSummarizer
results, groups, work_dir = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
import os
os.makedirs(f"{work_dir}/results/model", exist_ok=True)
for abbr, metrics in results.items():
    with open(f"{work_dir}/results/model/{abbr}.json", "w") as handle:
        json.dump(metrics, handle)
datasets = [dict(abbr=abbr, infer_cfg=dict(inferencer=dict(type="GenInferencer"))) for abbr in results]
config = ConfigDict(models=[dict(abbr="model")], datasets=datasets, work_dir=work_dir)
summarizer = DefaultSummarizer(config, summary_groups=groups)
raw, parsed, metrics, modes = summarizer._pick_up_results()
raw, parsed, metrics, modes = summarizer._calculate_group_metrics(raw, parsed, metrics, modes)
print(json.dumps({group["name"]: parsed["model"][group["name"]]["naive_average"] for group in groups}))
"""


def test_the_report_agrees_with_opencompass_summarizing_the_authors_groups(tmp_path):
    from test_benchmarks import demo_config, write_variant

    from shadowft.report import pair_tables, summarize
    from shadowft.workflow.config import validate_config

    code = "import sys; sys.argv[1:] = " + json.dumps(
        [json.dumps(authors_results(subset_scores())), json.dumps(AUTHORS_SUMMARY_GROUPS), str(tmp_path / "oc")]
    )
    opencompass = json.loads(in_eval_env(code + SUMMARIZER).stdout.splitlines()[-1])

    config = demo_config()
    config["evaluation"].update(groups=["math7", "code3", "reasoning9", "ifeval"], benchmarks={})
    rule = scoring(validate_config(config)["evaluation"])
    frame = summarize(write_variant(tmp_path, subset_scores()), tmp_path / "s.csv", tmp_path / "s.md", scoring=rule)
    (table,) = pair_tables(frame, "p", rule)
    cells = {column: cell.mean for column, cell in table.row("instruct").cells.items()}
    assert {g: cells[f"{g} avg"] for g in AUTHORS_GROUP_NAMES} == pytest.approx(
        {g: opencompass[name] for g, name in AUTHORS_GROUP_NAMES.items()}
    )
    assert cells["Average"] == pytest.approx(opencompass[AUTHORS_AVERAGE])
    for benchmark in ("mmlu", "mmlu_pro", "bbh", "bbh_0shot"):
        assert cells[benchmark] == pytest.approx(opencompass[benchmark]), benchmark
    assert cells["livecodebench"] == pytest.approx(opencompass["LiveCodeBench"])
