"""Training data prepared for LLaMA-Factory: the sampling rule, the row checks, the generated
dataset folder, and a Hub dataset's subset download through the fake hub.

Quick: JSON and JSON lines files (the core environment reads them). Parquet, which needs the
train environment's pyarrow, runs in tests/test_datasets_run.py.
"""

from __future__ import annotations

import hashlib
import json
import random

import pytest
import yaml
from conftest import ROOT, snakemake
from dataset_fixtures import (
    INFINITY_README,
    alpaca_rows,
    infinity_rows,
    sharegpt_openai_rows,
    write_jsonl,
)
from hub_fixtures import FakeHub
from test_workflow import planned_jobs

from shadowft.data.datasets import DATASET_INFO, ROWS_FILE, prepare_dataset
from shadowft.data.hub import download_dataset
from shadowft.data.rows import DatasetFormatError
from shadowft.data.sampling import sample_key, sample_rows
from shadowft.data.selection import DatasetSourceError
from shadowft.engine.layout import DATASET_MANIFEST
from shadowft.workflow.config import ConfigError, validate_config


def local(file, format="sharegpt", **extra):
    return {"source": "local", "file": str(file), "format": format, **extra}


# ---------------------------------------------------------------- sampling


def test_sample_is_the_rule_the_manifest_states():
    counts = {"Gen/b.parquet": 40, "Gen/a.parquet": 25}
    selected = sample_rows(counts, 10, seed=3)
    everything = sorted((sample_key(3, file, row), file, row) for file, n in counts.items() for row in range(n))
    expected = {}
    for _, file, row in everything[:10]:
        expected.setdefault(file, []).append(row)
    assert selected == {file: sorted(rows) for file, rows in sorted(expected.items())}
    assert sample_key(3, "Gen/a.parquet", 7) == hashlib.sha256(b"3/Gen/a.parquet/7").digest()


def test_sample_does_not_depend_on_file_order_and_moves_with_the_seed():
    counts = {f"Gen/train-{i:05d}.parquet": 50 + i for i in range(5)}
    shuffled = list(counts.items())
    random.Random(1).shuffle(shuffled)
    first = sample_rows(counts, 30, seed=0)
    assert sample_rows(dict(shuffled), 30, seed=0) == first
    assert sample_rows(counts, 30, seed=0) == first
    other = sample_rows(counts, 30, seed=1)
    assert other != first
    assert sum(map(len, other.values())) == sum(map(len, first.values())) == 30


@pytest.mark.bad_input("dataset", caught="job")
def test_a_sample_larger_than_the_data_is_an_error():
    with pytest.raises(ValueError, match="sample.count is 11, but the source files hold only 10 rows"):
        sample_rows({"a.jsonl": 10}, 11, seed=0)


# ---------------------------------------------------------------- preparing local files


def test_local_sharegpt_file_becomes_a_registered_dataset_folder(tmp_path):
    rows = sharegpt_openai_rows(12)
    source = write_jsonl(tmp_path / "chat.jsonl", rows)
    dest = tmp_path / "data" / "datasets" / "chat"

    manifest = prepare_dataset("chat", local(source, sample={"count": 5, "seed": 2}), source, dest)

    assert json.loads((dest / DATASET_INFO).read_text()) == {
        "chat": {
            "file_name": ROWS_FILE,
            "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
                "system_tag": "system",
            },
        }
    }
    chosen = sample_rows({"chat.jsonl": 12}, 5, seed=2)["chat.jsonl"]
    written = [json.loads(line) for line in (dest / ROWS_FILE).read_text().splitlines()]
    assert written == [rows[i] for i in chosen]
    assert manifest["sample"]["selected"] == {"chat.jsonl": chosen}
    assert manifest["source"]["files"] == [
        {
            "path": "chat.jsonl",
            "size": source.stat().st_size,
            "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
            "rows": 12,
        }
    ]
    assert {entry["path"]: entry["sha256"] for entry in manifest["outputs"]} == {
        name: hashlib.sha256((dest / name).read_bytes()).hexdigest() for name in (ROWS_FILE, DATASET_INFO)
    }
    assert json.loads((dest / DATASET_MANIFEST).read_text()) == manifest
    assert sorted(p.name for p in dest.parent.iterdir()) == ["chat"]


def test_local_alpaca_json_array_keeps_every_row(tmp_path):
    rows = alpaca_rows(7)
    rows[0]["system"] = "Be terse."
    source = tmp_path / "tasks.json"
    source.write_text(json.dumps(rows))

    manifest = prepare_dataset("tasks", local(source, "alpaca"), source, tmp_path / "out")

    assert json.loads((tmp_path / "out" / DATASET_INFO).read_text()) == {
        "tasks": {
            "file_name": ROWS_FILE,
            "formatting": "alpaca",
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
        }
    }
    assert [json.loads(line) for line in (tmp_path / "out" / ROWS_FILE).read_text().splitlines()] == rows
    assert manifest["sample"] is None and manifest["rows"] == 7


def test_the_same_file_gives_the_same_bytes(tmp_path):
    source = write_jsonl(tmp_path / "gen.jsonl", infinity_rows(40))
    spec = local(source, sample={"count": 9})
    prepare_dataset("d", spec, source, tmp_path / "one")
    prepare_dataset("d", spec, source, tmp_path / "two")
    assert (tmp_path / "one" / ROWS_FILE).read_bytes() == (tmp_path / "two" / ROWS_FILE).read_bytes()


# ---------------------------------------------------------------- format errors


def human(text="q"):
    return {"from": "human", "value": text}


def gpt(text="a"):
    return {"from": "gpt", "value": text}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"messages": [human(), gpt()]}, "row 2 (line 3): no column 'conversations'"),
        ({"conversations": []}, "row 2 (line 3): conversations: empty conversation"),
        ({"conversations": "q a"}, "row 2 (line 3): conversations: a list of turns expected, got str"),
        (
            {"conversations": [{"from": "user", "value": "q"}, gpt()]},
            "row 2 (line 3): conversations[0].from: unknown role 'user'",
        ),
        (
            {"conversations": [gpt(), human()]},
            "row 2 (line 3): conversations[0].from: role 'gpt' out of turn: LLaMA-Factory expects 'human' or "
            "'observation' here",
        ),
        (
            {"conversations": [human(), gpt(), human()]},
            "row 2 (line 3): conversations: 3 turns after the system prompt",
        ),
        (
            {"conversations": [human(), {"from": "system", "value": "s"}, gpt()]},
            "row 2 (line 3): conversations[1].from: role 'system' is allowed only as the first turn",
        ),
        (
            {"conversations": [human(), {"from": "gpt", "value": 3}]},
            "row 2 (line 3): conversations[1].value: not a string (int)",
        ),
        ({"conversations": [human(), {"from": "gpt"}]}, "row 2 (line 3): conversations[1]: no key 'value'"),
        ({"conversations": [human(), gpt()], "system": ["s"]}, "row 2 (line 3): system: not a string (list)"),
        (
            {"conversations": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
            "row 2 (line 3): conversations[0]: turns use 'role'/'content', earlier rows 'from'/'value'",
        ),
    ],
)
@pytest.mark.bad_input("dataset", caught="job")
def test_a_bad_sharegpt_row_is_named_by_file_row_and_key(tmp_path, bad, message):
    good = {"conversations": [human(), gpt()]}
    source = write_jsonl(tmp_path / "chat.jsonl", [good, good, bad, good])
    with pytest.raises(DatasetFormatError) as raised:
        prepare_dataset("chat", local(source), source, tmp_path / "out")
    assert f"{source}, {message}" in str(raised.value)
    assert not (tmp_path / "out").exists()


def test_a_system_turn_first_and_tool_turns_are_accepted(tmp_path):
    row = {
        "conversations": [
            {"from": "system", "value": "s"},
            human(),
            {"from": "function_call", "value": "{}"},
            {"from": "observation", "value": "42"},
            gpt(),
        ]
    }
    source = write_jsonl(tmp_path / "chat.jsonl", [row])
    assert prepare_dataset("chat", local(source), source, tmp_path / "out")["rows"] == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"instruction": "i"}, "row 1: no column 'output'"),
        ({"instruction": "i", "output": None}, "row 1: output: not a string (NoneType)"),
        ({"instruction": "", "output": "o"}, "row 1: instruction: empty (and no input)"),
        ({"instruction": "i", "input": 5, "output": "o"}, "row 1: input: not a string (int)"),
        ({"instruction": "i", "output": "o", "history": [["q"]]}, "row 1: history[0]: a pair of strings expected"),
    ],
)
@pytest.mark.bad_input("dataset", caught="job")
def test_a_bad_alpaca_row_is_named_by_file_and_row(tmp_path, bad, message):
    source = tmp_path / "tasks.json"
    source.write_text(json.dumps([{"instruction": "i", "output": "o"}, bad]))
    with pytest.raises(DatasetFormatError) as raised:
        prepare_dataset("tasks", local(source, "alpaca"), source, tmp_path / "out")
    assert f"{source}, {message}" in str(raised.value)


def test_every_bad_row_is_listed_up_to_a_limit(tmp_path):
    rows = [{"conversations": [gpt()]} for _ in range(50)]
    source = write_jsonl(tmp_path / "chat.jsonl", rows)
    with pytest.raises(DatasetFormatError) as raised:
        prepare_dataset("chat", local(source), source, tmp_path / "out")
    assert "20 format error(s) (the first ones" in str(raised.value)
    assert "row 19 (line 20)" in str(raised.value) and "row 20 " not in str(raised.value)


def test_a_sample_checks_only_the_rows_it_keeps(tmp_path):
    rows = infinity_rows(30)
    chosen = sample_rows({"gen.jsonl": 30}, 10, seed=0)["gen.jsonl"]
    left_out = next(i for i in range(30) if i not in chosen)
    rows[left_out] = {"conversations": []}
    source = write_jsonl(tmp_path / "gen.jsonl", rows)
    assert prepare_dataset("g", local(source, sample={"count": 10}), source, tmp_path / "out")["rows"] == 10
    rows[chosen[0]] = {"conversations": []}
    write_jsonl(source, rows)
    with pytest.raises(DatasetFormatError, match=f"row {chosen[0]} "):
        prepare_dataset("g", local(source, sample={"count": 10}), source, tmp_path / "out")


# ---------------------------------------------------------------- the hub download


@pytest.fixture
def hub(monkeypatch):
    for variable in ("HF_TOKEN", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(variable, raising=False)
    with FakeHub() as server:
        yield server


def jsonl_bytes(rows):
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def test_a_subset_downloads_its_readme_config_files_at_the_pinned_commit(hub, tmp_path):
    files = {
        "README.md": INFINITY_README.encode(),
        "Gen/part-0.jsonl": jsonl_bytes(infinity_rows(5)),
        "Gen/extra/deeper.jsonl": jsonl_bytes(infinity_rows(2)),
        "7M/part-0.jsonl": jsonl_bytes(infinity_rows(3)),
        "fig/logo.png": b"png",
    }
    pinned = hub.add_commit("BAAI/Infinity-Instruct", files, repo_type="dataset")
    hub.add_commit("BAAI/Infinity-Instruct", {**files, "Gen/part-1.jsonl": b"{}\n"}, repo_type="dataset")

    manifest = download_dataset("BAAI/Infinity-Instruct", pinned, tmp_path / "dl", subset="Gen", endpoint=hub.endpoint)

    # Gen/* as the Hub reads it: one folder level, so Gen/extra/ is not part of the config.
    assert [entry["path"] for entry in manifest["files"]] == ["README.md", "Gen/part-0.jsonl"]
    assert manifest["source"]["commit"] == pinned
    assert manifest["kind"] == "dataset"


def test_files_patterns_select_instead_of_a_subset(hub, tmp_path):
    files = {"data/a.parquet": b"PAR1", "data/b.jsonl": b"{}\n", "other/c.json": b"[]"}
    commit = hub.add_commit("org/data", files, repo_type="dataset")
    manifest = download_dataset("org/data", commit, tmp_path / "dl", files=["data/*"], endpoint=hub.endpoint)
    assert [entry["path"] for entry in manifest["files"]] == ["data/a.parquet", "data/b.jsonl"]


@pytest.mark.bad_input("dataset", caught="job")
def test_an_unknown_subset_names_the_configs(hub, tmp_path):
    commit = hub.add_commit("BAAI/Infinity-Instruct", {"README.md": INFINITY_README.encode()}, repo_type="dataset")
    with pytest.raises(DatasetSourceError, match=r"no config 'gen' \(configs: 3M, 7M, 0625, Gen, 7M_domains\)"):
        download_dataset("BAAI/Infinity-Instruct", commit, tmp_path / "dl", subset="gen", endpoint=hub.endpoint)
    assert not (tmp_path / "dl").exists()


# ---------------------------------------------------------------- the config


def experiment(**datasets):
    return {
        "models": {"b": {"source": "demo", "role": "base"}, "i": {"source": "demo", "role": "instruct"}},
        "pairs": {"demo": {"base": "b", "instruct": "i", "template": "qwen"}},
        "datasets": {"demo_task": {"source": "demo"}, **datasets},
        "training": {"dataset": next(iter(datasets), "demo_task")},
        "evaluation": {"benchmarks": {"demo_task": {"kind": "custom", "dataset": "demo_task"}}},
    }


def test_config_fills_the_dataset_defaults():
    config = validate_config(
        experiment(shadow_2k={"source": "hub", "repo": "BAAI/Infinity-Instruct", "revision": "abc", "subset": "Gen",
                              "sample": {"count": 2000}})
    )  # fmt: skip
    assert config["datasets"]["shadow_2k"]["format"] == "sharegpt"
    assert config["datasets"]["shadow_2k"]["invalid_rows"] == "error"
    assert config["datasets"]["shadow_2k"]["sample"] == {"count": 2000, "seed": 0}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"source": "hub", "repo": "BAAI/Infinity-Instruct", "subset": "Gen"}, "'revision' is a required property"),
        (
            {"source": "hub", "repo": "o/d", "revision": "r", "subset": "Gen", "files": ["x"]},
            "give at most one of subset, files",
        ),
        ({"source": "local", "file": "x.csv"}, "datasets.x.file: 'x.csv' does not match"),
        ({"source": "local", "file": "x.jsonl", "format": "csv"}, "datasets.x.format: 'csv' is not one of"),
        ({"source": "local", "path": "d", "format": "alpaca"}, "unknown key 'format' (allowed here: source, path)"),
        ({"source": "local", "file": "x.jsonl", "sample": {"count": 0}}, "datasets.x.sample.count: 0 is less than"),
    ],
)
@pytest.mark.bad_input("dataset", caught="plan")
def test_config_rejects_a_wrong_dataset_entry(spec, message):
    with pytest.raises(ConfigError) as raised:
        validate_config(experiment(x=spec))
    assert message in str(raised.value)


# ---------------------------------------------------------------- the plan


@pytest.mark.slow
def test_training_on_shadow_2k_plans_the_download_and_the_preparation_first(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"]["shadow_2k"] = {
        "source": "hub",
        "repo": "BAAI/Infinity-Instruct",
        "revision": "0" * 40,
        "subset": "Gen",
        "sample": {"count": 2000, "seed": 0},
    }
    config["datasets"]["tasks"] = {"source": "local", "file": "tasks.jsonl", "format": "alpaca"}
    write_jsonl(tmp_path / "tasks.jsonl", alpaca_rows(2))  # a declared local file must be there when the plan is made
    config["training"]["dataset"] = "shadow_2k"
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(tmp_path / "experiment.yaml"))
    jobs = planned_jobs(result.stdout)
    # One download and one preparation, before the four training runs; the unused local file is not prepared.
    assert (jobs["download_dataset"], jobs["prepare_dataset"], jobs["train"]) == (1, 1, 4)
    assert "data/datasets/shadow_2k" in result.stdout and "data/downloads/shadow_2k" in result.stdout


def test_skipping_invalid_rows_walks_the_ranking_on_and_records_them(tmp_path):
    rows = infinity_rows(30)
    ranked = [row for _, _, row in sorted((sample_key(0, "gen.jsonl", i), "gen.jsonl", i) for i in range(30))]
    broken = ranked[:3]
    for index in broken:
        rows[index] = {"conversations": [gpt()]}
    source = write_jsonl(tmp_path / "gen.jsonl", rows)
    spec = local(source, sample={"count": 10}, invalid_rows="skip")

    manifest = prepare_dataset("g", spec, source, tmp_path / "out")

    assert manifest["sample"]["selected"] == {"gen.jsonl": sorted(ranked[3:13])}
    assert [entry["row"] for entry in manifest["skipped"]] == [f"{source}, row {i} (line {i + 1})" for i in broken]
    assert "role 'gpt' out of turn" in manifest["skipped"][0]["problems"][0]
    assert rows_written(tmp_path / "out") == [{"conversations": rows[i]["conversations"]} for i in sorted(ranked[3:13])]


def test_skipping_without_a_sample_drops_the_invalid_rows(tmp_path):
    rows = alpaca_rows(6)
    rows[2]["output"] = None
    source = tmp_path / "tasks.json"
    source.write_text(json.dumps(rows))
    manifest = prepare_dataset("t", local(source, "alpaca", invalid_rows="skip"), source, tmp_path / "out")
    assert manifest["rows"] == 5 and rows_written(tmp_path / "out") == rows[:2] + rows[3:]
    assert manifest["skipped"] == [
        {"row": f"{source}, row 2", "problems": [f"{source}, row 2: output: not a string (NoneType)"]}
    ]


@pytest.mark.bad_input("dataset", caught="job")
def test_too_few_valid_rows_for_the_sample_is_an_error(tmp_path):
    rows = [{"conversations": []}] * 8 + infinity_rows(3)
    source = write_jsonl(tmp_path / "gen.jsonl", rows)
    with pytest.raises(DatasetFormatError, match="sample.count is 5, but only 3 of the 11 rows pass the checks"):
        prepare_dataset("g", local(source, sample={"count": 5}, invalid_rows="skip"), source, tmp_path / "out")


def rows_written(folder):
    return [json.loads(line) for line in (folder / ROWS_FILE).read_text().splitlines()]


@pytest.mark.slow
def test_a_dataset_folder_on_disk_is_used_as_it_is(tmp_path):
    folder = tmp_path / "my_data"
    prepare_dataset("mine", local(write_jsonl(tmp_path / "c.jsonl", infinity_rows(4))), tmp_path / "c.jsonl", folder)
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["datasets"]["mine"] = {"source": "local", "path": str(folder)}
    config["training"]["dataset"] = "mine"
    (tmp_path / "experiment.yaml").write_text(yaml.safe_dump(config))
    result = snakemake(tmp_path, "-n", "--cores", "1", "--configfile", str(tmp_path / "experiment.yaml"))
    jobs = planned_jobs(result.stdout)
    assert "prepare_dataset" not in jobs and "download_dataset" not in jobs and jobs["train"] == 4
    assert f"data/demo/base/model, {folder}" in result.stdout  # training_config's inputs
