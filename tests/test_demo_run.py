"""The whole demo DAG through Snakemake with the real tools, and its outputs checked
against independent computations."""

import json

import pandas as pd
import pytest
import torch
import yaml
from conftest import ROOT, demo_runs, snakemake
from safetensors.torch import load_file
from test_report import REPORT_RULES, assert_report_holds, decoded, workflow_files
from test_workflow import planned_jobs

from shadowft.demo import build as demo

pytestmark = pytest.mark.slow

PAIR = "results/demo"
RUNS = demo_runs()  # the demo's runs, one per tuning
CONFIG = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
ALPHAS = [f"{alpha:g}" for alpha in CONFIG["graft"]["alphas"]]
VARIANTS = ["base", "instruct"] + [
    f"{run}/{name}" for run in RUNS.values() for name in ["instruct_ft", "base_ft"] + [f"shadow_a{a}" for a in ALPHAS]
]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BENCHMARKS = sorted(CONFIG["evaluation"]["benchmarks"])


def state_dict(folder):
    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def test_every_output_is_there(demo_run):
    assert BENCHMARKS == ["demo_chat", "demo_task"]
    for variant in VARIANTS:
        for benchmark in BENCHMARKS:
            scores = pd.read_csv(demo_run / PAIR / "eval" / variant / benchmark / "scores.csv")
            assert set(scores.columns) >= {"benchmark", "dataset", "metric", "score", "num_examples"}
            assert scores["num_examples"].eq(demo.SIZES[benchmark.replace("demo_", "") + "_eval"]).all()
            assert scores["score"].between(0, 100).all()
    for run in RUNS.values():
        for role in ("base", "instruct"):
            assert (demo_run / PAIR / run / f"train_{role}.yaml").is_file()
            assert (demo_run / "logs" / "train" / "demo" / run / f"{role}.log").is_file()
            assert (demo_run / "benchmarks" / "train" / "demo" / run / f"{role}.tsv").is_file()
        assert json.loads((demo_run / PAIR / run / "delta" / "manifest.json").read_text())
        assert (demo_run / PAIR / run / "shadow_a1" / "shadowft_manifest.json").is_file()
    summary = pd.read_csv(demo_run / "results" / "summary.csv")
    assert sorted(summary["variant"].unique()) == sorted(VARIANTS)
    # Both halves of the paper's claim for every variant: the task's gain, the chat skills kept.
    benchmarks = summary.groupby("variant")["benchmark"].apply(lambda names: sorted(set(names))).to_dict()
    assert benchmarks == dict.fromkeys(VARIANTS, BENCHMARKS)
    # Each benchmark's exact match and its partial credit, each with its n and interval.
    assert set(summary["metric"]) == {"exact_match", "token_accuracy"}
    assert summary["interval"].isin(["Wilson", "bootstrap"]).all() and summary["ci_low"].le(summary["score"]).all()
    table = (demo_run / "results" / "summary.md").read_text()
    labels = ("Base", "Instruct", "Base + LoRA", "Instruct + LoRA", "Shadow-LoRA", "Base + Full", "Instruct + Full")
    for label in (*labels, "Shadow-Full"):
        assert f"| {label}" in table
    assert "sigma = " in table
    assert [line.split(":")[0] for line in table.splitlines() if line.startswith("Updates' overlap")] == [
        f"Updates' overlap, {run}" for run in RUNS.values()
    ]
    assert f"One seed, {CONFIG['seed']}." in table
    # The verdict before the tables, both halves of the claim for each tuning, decided by the intervals.
    verdict = table.split("## Glossary")[0]
    assert "## Verdict" in verdict and verdict.count(": tuning INSTRUCT directly costs its skills: ") == 2
    assert verdict.count(": the graft keeps them and gains the task: ") == 2
    for benchmark in BENCHMARKS:
        sample = (demo_run / "results" / "samples" / "demo" / f"{benchmark}.md").read_text()
        assert sample.count("## Question ") == 10 and sample.count("| Base + LoRA |") == 10
        assert f"(../../demo/eval/instruct/{benchmark}/predictions.json)" in sample
    for name in ("scores", "alpha", "claim", "similarity", "training", "overlap"):
        decoded(demo_run / "results" / "plots" / "demo" / f"{name}.png")
    # One learning rate per tuning: the report says so and draws no learning-rate figure.
    assert "one per setting, so there is no learning-rate figure" in table
    assert not (demo_run / "results" / "plots" / "demo" / "learning_rate.png").exists()
    for alpha in ALPHAS:
        assert f"| Shadow-LoRA (α={alpha}) |" in table and f"| Shadow-Full (α={alpha}) |" in table


def test_html_report_of_the_demo(demo_run):
    """`snakemake --report` on the finished demo: every table and figure embedded, with its caption."""
    snakemake(demo_run, "--report", "results/report.html")
    outputs = [path for path, rule in workflow_files(demo_run) if rule in REPORT_RULES]
    # four tables and the verdict, a sample of answers per benchmark (Markdown and HTML), six figures
    assert len(outputs) == 5 + 2 * len(BENCHMARKS) + 6
    assert_report_holds(demo_run, outputs)
    text = (demo_run / "results" / "report.html").read_text()
    assert "Base + LoRA" in text and "claim.png" in text and "demo_task.html" in text


def test_rerun_has_nothing_to_do(demo_run):
    result = snakemake(demo_run, "-n", "--cores", "2")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_adding_an_alpha_plans_only_its_grafts_their_evaluations_and_the_report(demo_run, tmp_path):
    """With the finished demo's metadata: a new alpha renames nothing and retrains nothing."""
    config = {**CONFIG, "graft": {**CONFIG["graft"], "alphas": [*CONFIG["graft"]["alphas"], 1.5]}}
    configfile = tmp_path / "alphas.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    output = snakemake(demo_run, "-n", "--cores", "2", "--configfile", str(configfile)).stdout
    print(output.split("Job stats:", 1)[1].split("\n\n", 1)[0])  # the job table, for the record
    assert planned_jobs(output) == {
        "graft": 2,
        "evaluate": 2 * len(BENCHMARKS),
        "report": 1,
        "samples": len(BENCHMARKS),
        "figures": 1,
        "alpha_figure": 1,
        "claim_figure": 1,
        "all": 1,
    }
    for run in RUNS.values():
        assert f"output: {PAIR}/{run}/shadow_a1.5\n" in output


def test_every_llamafactory_run_gets_the_config_seed(demo_run):
    runs = [demo_run / "data" / "demo" / f"{step}.yaml" for step in ("base", "instruct")]
    runs += [demo_run / PAIR / run / f"train_{role}.yaml" for run in RUNS.values() for role in ("base", "instruct")]
    assert [yaml.safe_load(run.read_text())["seed"] for run in runs] == [CONFIG["seed"]] * len(runs)


def test_a_rerun_from_scratch_is_bit_identical(demo_run, tmp_path, monkeypatch):
    """The cheapest part of the chain again in a fresh folder: build, pre-train BASE, score it on
    both benchmarks; every job in its own process, where the session's run used warm workers."""
    targets = [f"results/demo/eval/base/{benchmark}/scores.csv" for benchmark in BENCHMARKS]
    monkeypatch.setenv("SHADOWFT_WORKERS", "0")
    snakemake(tmp_path, "--cores", "2", *targets)
    built = [
        "data/demo/init/model.safetensors",
        "data/demo/init/tokenizer.json",
        "data/demo/base/model/model.safetensors",
    ]
    built += [
        f"data/demo/{folder}/{name}"
        for folder in ("pretrain", "demo_chat", "demo_task", "demo_preference")
        for name in ("dataset_info.json",)
    ]
    for path in built:
        assert (tmp_path / path).read_bytes() == (demo_run / path).read_bytes(), path
    for benchmark in BENCHMARKS:
        scored = f"results/demo/eval/base/{benchmark}"
        assert (tmp_path / scored / "scores.csv").read_bytes() == (demo_run / scored / "scores.csv").read_bytes()
        assert (tmp_path / scored / "predictions.json").read_bytes() == (
            demo_run / scored / "predictions.json"
        ).read_bytes()


def test_another_seed_builds_another_demo(demo_run, tmp_path):
    snakemake(tmp_path, "data/demo/base.yaml", "--cores", "1", "--config", "seed=7")
    assert yaml.safe_load((tmp_path / "data" / "demo" / "base.yaml").read_text())["seed"] == 7
    for path in (
        "data/demo/init/model.safetensors",
        "data/demo/demo_task/eval.jsonl",
        "data/demo/demo_chat/eval.jsonl",
    ):
        assert (tmp_path / path).read_bytes() != (demo_run / path).read_bytes(), path


def greedy_answers(folder, questions, max_new_tokens):
    """Each question asked alone (no padding) as the user turn, greedy: the new token ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    answers = []
    with torch.no_grad():
        for question in questions:
            prompt = tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, return_tensors="pt"
            )
            output = model.generate(prompt, max_new_tokens=max_new_tokens, do_sample=False)
            answers.append(output[0, prompt.shape[1] :].tolist())
    return tokenizer, answers


@pytest.mark.parametrize("tuning", ["lora", "full"])
@pytest.mark.parametrize("benchmark", ["demo_task", "demo_chat"])
def test_shadow_model_answers_as_scored_and_stops_at_im_end(demo_run, tuning, benchmark):
    """The graft, run by transformers alone, gives OpenCompass's predictions and score, and stops at <|im_end|>."""
    folder = demo_run / PAIR / RUNS[tuning] / "shadow_a1"
    scored = demo_run / PAIR / "eval" / RUNS[tuning] / "shadow_a1" / benchmark
    eval_file = demo_run / "data" / "demo" / benchmark / demo.EVAL_FILE
    held_out = [json.loads(line) for line in eval_file.read_text().splitlines()]
    predictions = json.loads((scored / "predictions.json").read_text())[benchmark]
    assert [predictions[str(i)]["origin_prompt"][0]["prompt"] for i in range(len(held_out))] == [
        r["question"] for r in held_out
    ]

    max_out_len = CONFIG["evaluation"]["benchmarks"][benchmark]["max_out_len"]
    tokenizer, answers = greedy_answers(folder, [r["question"] for r in held_out], max_out_len)
    im_end = tokenizer.convert_tokens_to_ids(demo.IM_END)
    correct, tokens_right = 0, 0.0
    for i, (record, ids) in enumerate(zip(held_out, answers, strict=True)):
        text = tokenizer.decode(ids).split(demo.IM_END)[0]
        assert text.strip() == predictions[str(i)]["prediction"].strip(), record["question"]
        assert predictions[str(i)]["correct"] is (text.strip() == record["answer"]), record["question"]
        golds = record["answer"].split()
        tokens_right += sum(a == b for a, b in zip(golds, text.split(), strict=False)) / len(golds)
        if text.strip() == record["answer"]:
            correct += 1
            # A right answer ends with <|im_end|>, and generation stops there (exact match strips
            # whitespace around the answer, which a graft sometimes puts there).
            assert ids[-1] == im_end and im_end not in ids[:-1], record["question"]
            assert tokenizer.decode(ids[:-1]).strip() == record["answer"], record["question"]
    scores = pd.read_csv(scored / "scores.csv").set_index("metric")["score"]
    assert scores["exact_match"] == pytest.approx(100 * correct / len(held_out))
    # The partial credit beside it: the share of the answer's letters in their place.
    assert scores["token_accuracy"] == pytest.approx(100 * tokens_right / len(held_out))


def lora_factors(adapter_dir, name):
    """(scale, B, A) of the checkpoint tensor `name`, read from PEFT's files directly."""
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    scale = config["lora_alpha"] / (config["r"] ** 0.5 if config.get("use_rslora") else config["r"])
    adapter = load_file(adapter_dir / "adapter_model.safetensors")
    stem = "base_model.model." + name.removesuffix(".weight")
    if f"{stem}.lora_A.weight" not in adapter:
        return None
    return scale, adapter[f"{stem}.lora_B.weight"].float(), adapter[f"{stem}.lora_A.weight"].float()


def assert_lora_graft(workdir, run, alpha):
    """The graft at `alpha` equals instruct + alpha * (lora_alpha / r) B @ A, from PEFT's files and torch alone."""
    instruct = state_dict(workdir / "data" / "demo" / "instruct" / "model")
    shadow = state_dict(workdir / PAIR / run / f"shadow_a{alpha:g}")
    adapter_dir = workdir / PAIR / run / "train_base" / "model"
    assert shadow.keys() == instruct.keys()
    updated = 0
    for name, weight in instruct.items():
        factors = lora_factors(adapter_dir, name)
        if factors is None:
            assert torch.equal(shadow[name], weight), name
            continue
        scale, b, a = factors
        expected = weight.float() + alpha * scale * (b @ a)
        # B @ A sums its rank terms in an order of the BLAS's choosing, so an independent
        # product differs in the last bits: the classic dot-product bound r * eps * sum|terms|.
        terms = weight.abs() + a.shape[0] * alpha * scale * (b.abs() @ a.abs())
        assert ((shadow[name] - expected).abs() <= torch.finfo(torch.float32).eps * terms).all(), name
        assert not torch.equal(shadow[name], weight), name
        updated += 1
    assert updated >= 7 * 2  # every projection of every layer


def assert_full_graft(workdir, run, alpha):
    """The run's graft at `alpha` equals instruct + alpha * (tuned base - base) on the projections, bit for bit."""
    base = state_dict(workdir / "data" / "demo" / "base" / "model")
    tuned = state_dict(workdir / PAIR / run / "train_base" / "model")
    instruct = state_dict(workdir / "data" / "demo" / "instruct" / "model")
    shadow = state_dict(workdir / PAIR / run / f"shadow_a{alpha:g}")
    assert shadow.keys() == instruct.keys()
    grafted = 0
    for name, weight in instruct.items():
        # The official preset grafts the projection modules, their biases (Qwen2's q/k/v) included.
        if name.split(".")[-2] in PROJECTIONS:
            expected = (weight.float() + alpha * (tuned[name].float() - base[name].float())).to(weight.dtype)
            assert not torch.equal(tuned[name], base[name]), name  # training moved it
            grafted += 1
        else:
            expected = weight
        assert torch.equal(shadow[name], expected), name
    assert grafted >= 7 * 2


def test_lora_shadow_is_instruct_plus_adapter_update(demo_run):
    assert_lora_graft(demo_run, RUNS["lora"], 1.0)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_full_shadow_is_instruct_plus_base_update_on_projections(demo_run, alpha):
    assert_full_graft(demo_run, RUNS["full"], float(alpha))


def test_lora_shadow_matches_peft_merge_and_unload(demo_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    instruct_dir = demo_run / "data" / "demo" / "instruct" / "model"
    adapter_dir = demo_run / PAIR / RUNS["lora"] / "train_base" / "model"
    merged = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(instruct_dir), adapter_dir
    ).merge_and_unload()
    shadow = state_dict(demo_run / PAIR / RUNS["lora"] / "shadow_a1")
    for name, expected in merged.state_dict().items():
        if name not in shadow:
            continue  # a tied lm_head that the checkpoint does not store
        actual = shadow[name]
        if actual.dtype == torch.float32:
            # PEFT adds B @ A * s to W in fp32 with its own operation order; we round once
            # from the same fp32 sum, so the two agree to fp32 rounding of the update.
            torch.testing.assert_close(
                actual, expected, rtol=0, atol=4 * torch.finfo(torch.float32).eps * expected.abs().max().item()
            )
        else:
            ulp = (expected.float().abs() * torch.finfo(expected.dtype).eps).clamp_min(torch.finfo(expected.dtype).tiny)
            assert ((actual.float() - expected.float()).abs() <= ulp).all(), name


def update(workdir, run, role, reference, name):
    """Run `run`'s update of checkpoint tensor `name` by tuning `role` (float64), from PEFT's files or
    the tuned model and torch alone; zeros where a LoRA adapter leaves the tensor alone."""
    folder = workdir / PAIR / run / f"train_{role}" / "model"
    if (folder / "adapter_config.json").is_file():
        factors = lora_factors(folder, name)
        if factors is None:
            return torch.zeros_like(reference[name], dtype=torch.float64)
        scale, b, a = factors
        return scale * (b.double() @ a.double())
    return state_dict(folder)[name].double() - reference[name].double()


@pytest.mark.parametrize("tuning", ["lora", "full"])
def test_the_demos_overlap_against_torch(demo_run, tuning):
    """results/demo/{run}/overlap.csv, overall: the grafted tensors' updates pooled, from the models and torch alone."""
    run = RUNS[tuning]
    base = state_dict(demo_run / "data" / "demo" / "base" / "model")
    instruct = state_dict(demo_run / "data" / "demo" / "instruct" / "model")
    sums = dict.fromkeys(("w", "i", "b", "f", "ib", "bf"), 0.0)
    grafted = [name for name in base if name.startswith("model.layers.") and name.split(".")[-2] in PROJECTIONS]
    for name in grafted:
        w = base[name].double()
        i = instruct[name].double() - w
        b = update(demo_run, run, "base", base, name)
        f = update(demo_run, run, "instruct", instruct, name)
        for key, (x, y) in {"w": (w, w), "i": (i, i), "b": (b, b), "f": (f, f), "ib": (i, b), "bf": (b, f)}.items():
            sums[key] += float((x * y).sum())
    table = pd.read_csv(demo_run / PAIR / run / "overlap.csv")
    overall = table[table["level"] == "overall"].iloc[0]
    assert overall["numel"] == sum(base[name].numel() for name in grafted)
    expected = {
        "rel_i": (sums["i"] / sums["w"]) ** 0.5,
        "cos_ib": sums["ib"] / (sums["i"] * sums["b"]) ** 0.5,
        "ratio_bi": (sums["b"] / sums["i"]) ** 0.5,
        "cos_bf": sums["bf"] / (sums["b"] * sums["f"]) ** 0.5,
        "ratio_fb": (sums["f"] / sums["b"]) ** 0.5,
    }
    # Both in float64; the sums are added in other orders.
    assert {key: overall[key] for key in expected} == pytest.approx(expected, rel=1e-9)
    assert set(table[table["level"] == "layer"]["layer"]) == {0, 1}
