"""The `shadowft` command line, the similarity measure, killed runs, and loading the result with transformers."""

import csv
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from delta_fixtures import _private_hash_cache, llama, load_tensors, qwen2, read_json  # noqa: F401

from shadowft.cli import main
from shadowft.engine.sigma import layer_index, similarity

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------ cli


@pytest.mark.parametrize("command", [[], ["extract-delta"], ["graft"], ["similarity"], ["delta-to-lora"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: shadowft" in capsys.readouterr().out


def test_extract_then_graft_from_the_command_line(llama, tmp_path, capsys):
    assert (
        main(
            [
                "extract-delta",
                "--base",
                str(llama.base),
                "--tuned",
                str(llama.tuned),
                "--out",
                str(tmp_path / "delta"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "graft",
                "--instruct",
                str(llama.instruct),
                "--delta",
                str(tmp_path / "delta"),
                "--out",
                str(tmp_path / "out"),
                "--alpha",
                "0.5",
                "--preset",
                "official",
                "--max-shard-size",
                "40KB",
                "--no-progress",
            ]
        )
        == 0
    )
    assert "14 tensors grafted" in capsys.readouterr().err
    manifest = read_json(tmp_path / "out" / "shadowft_manifest.json")
    assert manifest["alpha"] == 0.5 and manifest["policy"]["preset"] == "official"
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()


def test_graft_on_the_fly_from_base_and_adapter(llama, tmp_path):
    assert (
        main(
            [
                "graft",
                "--instruct",
                str(llama.instruct),
                "--base",
                str(llama.base),
                "--adapter",
                str(llama.adapter),
                "--out",
                str(tmp_path / "out"),
                "--no-progress",
            ]
        )
        == 0
    )
    assert read_json(tmp_path / "out" / "shadowft_manifest.json")["delta"]["kind"] == "lora"


@pytest.mark.bad_input("checkpoint", caught="job")
def test_errors_are_one_clear_line(llama, tmp_path, capsys):
    assert (
        main(
            [
                "graft",
                "--instruct",
                str(llama.instruct),
                "--delta",
                str(tmp_path / "nowhere"),
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert err.startswith("shadowft graft: error:") and "not a delta directory" in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["graft", "--instruct", str(llama.instruct), "--tuned", str(llama.tuned), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "--base goes with --tuned or --adapter" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_console_script_is_installed():
    result = subprocess.run(
        [str(Path(sys.executable).parent / "shadowft"), "graft", "--help"], capture_output=True, text=True, check=True
    )
    assert "--vocab-mismatch {error,shared,keep}" in result.stdout


# ------------------------------------------------------------------ similarity


def test_similarity_matches_the_paper_formula(llama, tmp_path):
    summary = similarity(llama.base, llama.instruct, tmp_path / "sigma.csv", progress=False)
    A, B = load_tensors(llama.base), load_tensors(llama.instruct)
    expected = {}
    for name in A:
        a, b = A[name].double(), B[name].double()
        expected[name] = float((a - b).abs().sum() / (a.abs().sum() + b.abs().sum()))
    with open(tmp_path / "sigma.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["level", "name", "layer", "numel", "sum_abs_diff", "sum_abs_a", "sum_abs_b", "sigma"]
    tensors = {r["name"]: float(r["sigma"]) for r in rows if r["level"] == "tensor"}
    assert tensors == pytest.approx(expected, rel=1e-5)
    in_layers = [expected[n] for n in expected if layer_index(n) is not None]
    assert summary["overall_sigma"] == pytest.approx(sum(in_layers) / len(in_layers), rel=1e-5)
    layer_rows = {int(r["layer"]): float(r["sigma"]) for r in rows if r["level"] == "layer"}
    assert layer_rows == pytest.approx(summary["layers"]) and sorted(layer_rows) == [0, 1]
    for layer in (0, 1):  # a layer's sigma is the mean of its tensors' sigma
        own = [value for name, value in expected.items() if name.startswith(f"model.layers.{layer}.")]
        assert summary["layers"][layer] == pytest.approx(sum(own) / len(own), rel=1e-5)
    assert [r["level"] for r in rows].count("overall") == 1 and 0 < summary["overall_sigma"] < 0.2


def test_similarity_of_a_model_with_itself_is_zero_and_skips_unshared_tensors(llama, qwen2, tmp_path):
    assert similarity(qwen2.base, qwen2.base, tmp_path / "same.csv", progress=False)["overall_sigma"] == 0.0
    assert (
        main(["similarity", str(qwen2.base), str(qwen2.instruct), "--out", str(tmp_path / "q.csv"), "--no-progress"])
        == 0
    )
    assert layer_index("model.layers.12.mlp.up_proj.weight") == 12
    assert layer_index("model.norm.weight") is None


# --------------------------------------------------------------- interrupted runs

_SLOW_GRAFT = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    import shadowft.engine as checkpoint

    write = checkpoint.SafetensorsWriter.write
    def slow_write(self, *args):
        write(self, *args)
        if not Path(sys.argv[4]).exists():
            Path(sys.argv[4]).touch()
            time.sleep(1)  # the parent signals us while output is half written

    checkpoint.SafetensorsWriter.write = slow_write
    from shadowft.cli import main
    sys.exit(main(["graft", "--instruct", sys.argv[1], "--delta", sys.argv[2], "--out", sys.argv[3],
                   "--no-progress", "--threads", "1"]))
""")


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_interrupted_graft_leaves_no_output(llama, tmp_path, signum):
    assert (
        main(
            [
                "extract-delta",
                "--base",
                str(llama.base),
                "--tuned",
                str(llama.tuned),
                "--out",
                str(tmp_path / "delta"),
                "--no-progress",
            ]
        )
        == 0
    )
    marker, out = tmp_path / "writing", tmp_path / "work" / "out"
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_GRAFT, str(llama.instruct), str(tmp_path / "delta"), str(out), str(marker)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    deadline = time.monotonic() + 60
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists(), "the graft never started writing"
    process.send_signal(signum)
    assert process.wait(timeout=60) == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signal.SIGTERM)
    assert not out.exists()
    leftovers = [p.name for p in out.parent.iterdir()]
    if signum == signal.SIGKILL:  # nothing can clean up after SIGKILL: only a dot-named temporary remains
        assert len(leftovers) == 1 and leftovers[0].startswith(".out.tmp-")
    else:
        assert leftovers == []
    assert (
        main(
            [
                "graft",
                "--instruct",
                str(llama.instruct),
                "--delta",
                str(tmp_path / "delta"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )


# ------------------------------------------------------------ transformers


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_grafted_model_loads_with_transformers_and_generates(family, request, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    models = request.getfixturevalue(family)
    assert (
        main(
            [
                "graft",
                "--instruct",
                str(models.instruct),
                "--base",
                str(models.base),
                "--tuned",
                str(models.tuned),
                "--out",
                str(tmp_path / "out"),
                "--max-shard-size",
                "40KB",
                "--no-progress",
            ]
        )
        == 0
    )
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.bfloat16)
    grafted = load_tensors(tmp_path / "out")
    for name, parameter in model.state_dict().items():
        expected = grafted.get(name, grafted.get("model.embed_tokens.weight"))  # tied lm_head
        assert torch.equal(parameter, expected)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    inputs = tokenizer("w5 w6 w7", return_tensors="pt")
    generated = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, inputs["input_ids"].shape[1] + 4)
