"""Full-model deltas: extract_delta / graft against an independent full-load torch oracle, and the edge cases."""

import hashlib
import json
import shutil

import pytest
from delta_fixtures import _private_hash_cache, llama, load_tensors, qwen2, read_json  # noqa: F401

from shadowft.engine.extraction import Delta, extract_delta
from shadowft.engine.grafting import graft
from shadowft.engine.layout import DeltaError
from shadowft.engine.policy import Selection

torch = pytest.importorskip("torch")
from safetensors.torch import save_file  # noqa: E402

_INT = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32, torch.float64: torch.int64}


def assert_bitwise_equal(actual: dict, expected: dict) -> None:
    assert sorted(actual) == sorted(expected)
    differing = [
        name
        for name in expected
        if actual[name].dtype != expected[name].dtype
        or actual[name].shape != expected[name].shape
        or not torch.equal(actual[name].view(_INT[actual[name].dtype]), expected[name].view(_INT[expected[name].dtype]))
    ]
    assert not differing, f"not bit-identical: {differing}"


def oracle(instruct, base, tuned, alpha=1.0, dtype=None, names=None):
    """(W_I.float() + alpha * (W_T.float() - W_B.float())).to(dtype), loading everything in torch."""
    inst, B, T = load_tensors(instruct), load_tensors(base), load_tensors(tuned)
    out = {}
    for name, weight in inst.items():
        target = dtype or weight.dtype
        if names is None or name in names:
            out[name] = (weight.float() + alpha * (T[name].float() - B[name].float())).to(target)
        else:
            out[name] = weight.to(target)
    return out


def rewrite(source, destination, transform=lambda tensors: tensors, config=None):
    """Copy a model folder as one model.safetensors after `transform`, optionally patching config.json."""
    destination.mkdir(parents=True)
    save_file(transform(load_tensors(source)), destination / "model.safetensors", metadata={"format": "pt"})
    settings = {**read_json(source / "config.json"), **(config or {})}
    (destination / "config.json").write_text(json.dumps(settings))
    return destination


# ------------------------------------------------------------------ oracles


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("alpha", [1.0, 0.37])
def test_graft_equals_full_load_oracle_bit_for_bit(family, alpha, request, tmp_path):
    models = request.getfixturevalue(family)
    with Delta.from_models(models.base, models.tuned) as delta:
        manifest = graft(models.instruct, delta, tmp_path / "out", alpha=alpha, progress=False)
    assert_bitwise_equal(load_tensors(tmp_path / "out"), oracle(models.instruct, models.base, models.tuned, alpha))
    assert manifest["counts"]["grafted"] == manifest["counts"]["tensors"] and manifest["alpha"] == alpha


def test_saved_delta_grafts_exactly_like_the_models(llama, tmp_path):
    manifest = extract_delta(llama.base, tmp_path / "delta", tuned=llama.tuned, progress=False)
    assert manifest["kind"] == "full" and manifest["dtype"] == "float32"
    files = manifest["inputs"]["tuned"]["files"]
    for name, described in files.items():
        assert described["sha256"] == hashlib.sha256((llama.tuned / name).read_bytes()).hexdigest()
    assert read_json(tmp_path / "delta" / "manifest.json") == manifest
    graft(llama.instruct, tmp_path / "delta", tmp_path / "from-delta", alpha=0.5, progress=False)
    with Delta.from_models(llama.base, llama.tuned) as delta:
        graft(llama.instruct, delta, tmp_path / "on-the-fly", alpha=0.5, progress=False)
    assert_bitwise_equal(load_tensors(tmp_path / "from-delta"), load_tensors(tmp_path / "on-the-fly"))


def test_alpha_zero_returns_instruct_bit_for_bit(qwen2, tmp_path):
    with Delta.from_models(qwen2.base, qwen2.tuned) as delta:
        manifest = graft(qwen2.instruct, delta, tmp_path / "out", alpha=0.0, progress=False)
    assert_bitwise_equal(load_tensors(tmp_path / "out"), load_tensors(qwen2.instruct))
    assert manifest["counts"]["grafted"] == 0


def test_delta_of_a_model_with_itself_is_zero_and_grafts_to_instruct(llama, tmp_path):
    extract_delta(llama.base, tmp_path / "zero", tuned=llama.base, progress=False)
    assert all(not tensor.any() for tensor in load_tensors(tmp_path / "zero").values())
    graft(llama.instruct, tmp_path / "zero", tmp_path / "out", progress=False)
    # W + 0.0 is W bit for bit for every W except -0.0 (which becomes +0.0); random weights hold none
    assert_bitwise_equal(load_tensors(tmp_path / "out"), load_tensors(llama.instruct))


def test_output_is_a_complete_model_folder_from_instruct(llama, tmp_path):
    with Delta.from_models(llama.base, llama.tuned) as delta:
        manifest = graft(llama.instruct, delta, tmp_path / "out", max_shard_size="30KB", progress=False)
    out = tmp_path / "out"
    for name in (
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        assert (out / name).read_bytes() == (llama.instruct / name).read_bytes()
    index = read_json(out / "model.safetensors.index.json")
    assert len(set(index["weight_map"].values())) > 1
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in load_tensors(out).values())
    assert read_json(out / "shadowft_manifest.json") == manifest
    assert set(manifest["inputs"]) == {"instruct", "base", "tuned"}
    assert "tokenizer.json" in manifest["inputs"]["instruct"]["files"]
    assert manifest["versions"]["numpy"] and manifest["versions"]["numba"] and manifest["policy"]["preset"] == "all"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# ------------------------------------------------------------------ policies


def test_official_preset_grafts_only_projections(qwen2, tmp_path):
    with Delta.from_models(qwen2.base, qwen2.tuned, selection=Selection("official")) as delta:
        manifest = graft(qwen2.instruct, delta, tmp_path / "out", preset="official", progress=False)
    projections = {n for n in load_tensors(qwen2.instruct) if "_proj." in n}
    assert any(n.endswith("q_proj.bias") for n in projections)
    assert_bitwise_equal(
        load_tensors(tmp_path / "out"), oracle(qwen2.instruct, qwen2.base, qwen2.tuned, names=projections)
    )
    assert manifest["counts"]["grafted"] == len(projections)
    assert manifest["tensors"]["model.norm.weight"] == "kept: not selected"


@pytest.mark.bad_input("config", caught="job")
def test_include_and_exclude_regexes(llama, tmp_path):
    with Delta.from_models(llama.base, llama.tuned) as delta:
        graft(llama.instruct, delta, tmp_path / "out", include=[r"layers\.1\."], exclude=["norm"], progress=False)
    chosen = {n for n in load_tensors(llama.instruct) if "layers.1." in n and "norm" not in n}
    assert_bitwise_equal(load_tensors(tmp_path / "out"), oracle(llama.instruct, llama.base, llama.tuned, names=chosen))
    with pytest.raises(DeltaError, match="invalid regular expression"):
        Selection(include=["("])
    with pytest.raises(DeltaError, match="unknown preset"):
        Selection("everything")


@pytest.fixture(scope="module")
def wide_instruct(llama, tmp_path_factory):
    """The llama instruct model with 4 extra vocabulary rows (embeddings and lm_head)."""

    def widen(tensors):
        for name in ("model.embed_tokens.weight", "lm_head.weight"):
            tensors[name] = torch.cat([tensors[name], torch.randn(4, tensors[name].shape[1]).bfloat16()])
        return tensors

    return rewrite(llama.instruct, tmp_path_factory.mktemp("wide") / "instruct", widen, {"vocab_size": 100})


@pytest.mark.bad_input("checkpoint", caught="job")
def test_vocab_mismatch_is_an_error_by_default(llama, wide_instruct, tmp_path):
    with Delta.from_models(llama.base, llama.tuned) as delta:
        message = r"size differs for '(lm_head|model.embed_tokens).weight'.*\[100, 32\].*\[96, 32\]"
        with pytest.raises(DeltaError, match=message):
            graft(wide_instruct, delta, tmp_path / "out", progress=False)
    assert not list(tmp_path.iterdir())


def test_vocab_mismatch_shared_grafts_the_shared_rows(llama, wide_instruct, tmp_path):
    with Delta.from_models(llama.base, llama.tuned) as delta:
        manifest = graft(wide_instruct, delta, tmp_path / "out", vocab_mismatch="shared", progress=False)
    out, inst, B, T = (load_tensors(p) for p in (tmp_path / "out", wide_instruct, llama.base, llama.tuned))
    for name in ("model.embed_tokens.weight", "lm_head.weight"):
        expected = inst[name].clone()
        expected[:96] = (inst[name][:96].float() + (T[name].float() - B[name].float())).bfloat16()
        assert torch.equal(out[name].view(torch.int16), expected.view(torch.int16))
        assert manifest["tensors"][name].startswith("partially grafted: rows [0, 96) of 100")
    assert manifest["counts"]["partially_grafted"] == 2


def test_vocab_mismatch_keep_keeps_instruct_tensors(llama, wide_instruct, tmp_path):
    with Delta.from_models(llama.base, llama.tuned) as delta:
        graft(wide_instruct, delta, tmp_path / "out", vocab_mismatch="keep", progress=False)
    out, inst = load_tensors(tmp_path / "out"), load_tensors(wide_instruct)
    assert torch.equal(out["lm_head.weight"].view(torch.int16), inst["lm_head.weight"].view(torch.int16))
    assert not torch.equal(out["model.norm.weight"], inst["model.norm.weight"])


@pytest.mark.bad_input("checkpoint", caught="job")
def test_vocab_mismatch_between_base_and_tuned(llama, wide_instruct, tmp_path):
    with pytest.raises(DeltaError, match="vocabulary size differs for '(lm_head|model.embed_tokens).weight'"):
        extract_delta(llama.base, tmp_path / "delta", tuned=wide_instruct, progress=False)
    manifest = extract_delta(
        llama.base, tmp_path / "delta", tuned=wide_instruct, vocab_mismatch="shared", progress=False
    )
    assert manifest["tensors"]["lm_head.weight"]["shape"] == [96, 32]


# ----------------------------------------------------------- tied embeddings


def test_tied_models_stay_tied(qwen2, tmp_path):
    assert "lm_head.weight" not in load_tensors(qwen2.instruct)
    with Delta.from_models(qwen2.base, qwen2.tuned) as delta:
        manifest = graft(qwen2.instruct, delta, tmp_path / "out", progress=False)
    assert "lm_head.weight" not in load_tensors(tmp_path / "out")
    assert manifest["tied_embeddings"] == {"instruct": True, "delta": True}


def test_untied_instruct_gets_the_tied_base_head_update(qwen2, tmp_path):
    """Base ties lm_head to the embeddings: the head's update is the embeddings' update."""

    def untie(tensors):
        tensors["lm_head.weight"] = (tensors["model.embed_tokens.weight"].float() * 1.01).bfloat16()
        return tensors

    instruct = rewrite(qwen2.instruct, tmp_path / "untied", untie, {"tie_word_embeddings": False})
    with Delta.from_models(qwen2.base, qwen2.tuned) as delta:
        manifest = graft(instruct, delta, tmp_path / "out", progress=False)
    out, inst, B, T = (load_tensors(p) for p in (tmp_path / "out", instruct, qwen2.base, qwen2.tuned))
    embed = "model.embed_tokens.weight"
    expected = (inst["lm_head.weight"].float() + (T[embed].float() - B[embed].float())).bfloat16()
    assert torch.equal(out["lm_head.weight"].view(torch.int16), expected.view(torch.int16))
    assert manifest["tensors"]["lm_head.weight"] == f"grafted: update of the tied {embed}"


@pytest.mark.bad_input("checkpoint", caught="job")
def test_tied_instruct_refuses_a_separate_head_update(llama, tmp_path):
    def tie(tensors):
        del tensors["lm_head.weight"]
        return tensors

    instruct = rewrite(llama.instruct, tmp_path / "tied", tie, {"tie_word_embeddings": True})
    with Delta.from_models(llama.base, llama.tuned) as delta:
        with pytest.raises(DeltaError, match="ties its output head.*'lm_head.weight'.*exclude"):
            graft(instruct, delta, tmp_path / "out", progress=False)
        graft(instruct, delta, tmp_path / "out", exclude=["^lm_head"], progress=False)
    assert "lm_head.weight" not in load_tensors(tmp_path / "out")


def test_missing_lm_head_without_config_means_tied(qwen2, tmp_path):
    bare = rewrite(qwen2.instruct, tmp_path / "bare")
    (bare / "config.json").unlink()
    with Delta.from_models(qwen2.base, qwen2.tuned) as delta:
        manifest = graft(bare / "model.safetensors", delta, tmp_path / "out", progress=False)
    assert manifest["tied_embeddings"]["instruct"] is True


# ------------------------------------------------------------------- dtypes


def test_mixed_input_dtypes_round_once(llama, tmp_path):
    base = rewrite(llama.base, tmp_path / "base16", lambda t: {n: v.half() for n, v in t.items()})
    tuned = rewrite(llama.tuned, tmp_path / "tuned32", lambda t: {n: v.float() for n, v in t.items()})
    with Delta.from_models(base, tuned) as delta:
        graft(llama.instruct, delta, tmp_path / "bf16", progress=False)
        graft(llama.instruct, delta, tmp_path / "fp16", dtype="float16", progress=False)
    assert_bitwise_equal(load_tensors(tmp_path / "bf16"), oracle(llama.instruct, base, tuned))
    assert_bitwise_equal(load_tensors(tmp_path / "fp16"), oracle(llama.instruct, base, tuned, dtype=torch.float16))
    config = read_json(tmp_path / "fp16" / "config.json")
    assert config.get("dtype", config.get("torch_dtype")) == "float16"


def test_float32_output_keeps_the_exact_sum(llama, tmp_path):
    with Delta.from_models(llama.base, llama.tuned) as delta:
        graft(llama.instruct, delta, tmp_path / "out", dtype="fp32", progress=False)
    assert_bitwise_equal(
        load_tensors(tmp_path / "out"), oracle(llama.instruct, llama.base, llama.tuned, dtype=torch.float32)
    )


# ------------------------------------------------------------------ errors


@pytest.mark.bad_input("checkpoint", caught="job")
def test_tensor_missing_from_one_input_is_named_and_nothing_is_written(llama, tmp_path):
    def drop(tensors):
        del tensors["model.layers.1.mlp.up_proj.weight"]
        return tensors

    tuned = rewrite(llama.tuned, tmp_path / "tuned", drop)
    with pytest.raises(DeltaError, match="'model.layers.1.mlp.up_proj.weight'.*missing from the tuned"):
        extract_delta(llama.base, tmp_path / "delta", tuned=tuned, progress=False)
    instruct = rewrite(llama.instruct, tmp_path / "instruct", drop)
    with Delta.from_models(llama.base, llama.tuned) as delta:
        with pytest.raises(DeltaError, match="'model.layers.1.mlp.up_proj.weight'.*missing from the instruct"):
            graft(instruct, delta, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instruct", "tuned"]


@pytest.mark.bad_input("checkpoint", caught="job")
def test_shape_mismatch_is_named_and_nothing_is_written(llama, tmp_path):
    def narrow(tensors):
        name = "model.layers.0.mlp.down_proj.weight"
        tensors[name] = tensors[name][:, :8].contiguous()
        return tensors

    instruct = rewrite(llama.instruct, tmp_path / "instruct", narrow)
    with Delta.from_models(llama.base, llama.tuned) as delta:
        with pytest.raises(DeltaError, match=r"shape mismatch for 'model.layers.0.mlp.down_proj.weight'.*\[32, 8\]"):
            graft(instruct, delta, tmp_path / "out", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["instruct"]


def test_failure_while_writing_leaves_no_output(llama, tmp_path, monkeypatch):
    from shadowft.engine.writer import SafetensorsWriter

    calls = []
    real_write = SafetensorsWriter.write

    def failing_write(*args):
        calls.append(1)
        if len(calls) == 5:
            raise OSError("disk full")
        return real_write(*args)

    monkeypatch.setattr(SafetensorsWriter, "write", failing_write)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "previous.txt").write_text("earlier result")
    with Delta.from_models(llama.base, llama.tuned) as delta:
        with pytest.raises(OSError, match="disk full"):
            graft(llama.instruct, delta, tmp_path / "out", progress=False, threads=2)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["previous.txt"]


@pytest.mark.bad_input("config", caught="job")
def test_bad_arguments(llama, tmp_path):
    with pytest.raises(DeltaError, match="exactly one of tuned"):
        extract_delta(llama.base, tmp_path / "d", tuned=llama.tuned, adapter=llama.adapter)
    with pytest.raises(DeltaError, match="vocab_mismatch"):
        extract_delta(llama.base, tmp_path / "d", tuned=llama.tuned, vocab_mismatch="maybe")
    with pytest.raises(DeltaError, match="not a delta directory"):
        graft(llama.instruct, llama.tuned, tmp_path / "out")
    with pytest.raises(DeltaError, match="alpha"):
        graft(llama.instruct, llama.tuned, tmp_path / "out", alpha=float("nan"))
    assert not list(tmp_path.iterdir())


def test_output_may_not_replace_an_input(llama, tmp_path):
    shutil.copytree(llama.instruct, tmp_path / "instruct")
    with Delta.from_models(llama.base, llama.tuned) as delta:
        with pytest.raises(DeltaError, match="would replace the input"):
            graft(tmp_path / "instruct", delta, tmp_path, progress=False)
    with pytest.raises(DeltaError, match="would replace the input"):
        extract_delta(llama.base, llama.tuned, tuned=llama.tuned, progress=False)
    assert (tmp_path / "instruct" / "config.json").exists()


def test_rerun_replaces_an_existing_output(llama, tmp_path):
    extract_delta(llama.base, tmp_path / "delta", tuned=llama.tuned, progress=False)
    graft(llama.instruct, tmp_path / "delta", tmp_path / "out", alpha=0.0, progress=False)
    graft(llama.instruct, tmp_path / "delta", tmp_path / "out", alpha=1.0, progress=False)
    assert read_json(tmp_path / "out" / "shadowft_manifest.json")["alpha"] == 1.0
    shutil.rmtree(tmp_path / "delta")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_extract_options_as_a_record_or_as_keywords(llama, tmp_path):
    from shadowft.engine.extraction import ExtractOptions

    options = ExtractOptions(preset="official", dtype="bfloat16", progress=False, chunk_elements=64)
    by_keywords = extract_delta(llama.base, tmp_path / "a", tuned=llama.tuned, preset="official", dtype="bfloat16",
                                progress=False, chunk_elements=64)  # fmt: skip
    by_record = extract_delta(llama.base, tmp_path / "b", options, tuned=llama.tuned)
    with pytest.raises(TypeError, match="not both"):
        extract_delta(llama.base, tmp_path / "c", options, tuned=llama.tuned, dtype="float32")
    assert_bitwise_equal(load_tensors(tmp_path / "b"), load_tensors(tmp_path / "a"))
    assert by_record["tensors"] == by_keywords["tensors"] and by_record["dtype"] == by_keywords["dtype"] == "bfloat16"
    assert by_record["selection"] == by_keywords["selection"] and by_record["selection"]["preset"] == "official"


def test_graft_options_as_a_record_or_as_keywords(llama, tmp_path):
    from shadowft.engine.grafting import GraftOptions

    options = GraftOptions(alpha=0.5, preset="official", progress=False, chunk_elements=64)
    with Delta.from_models(llama.base, llama.tuned) as delta:
        by_keywords = graft(llama.instruct, delta, tmp_path / "a", alpha=0.5, preset="official", progress=False,
                            chunk_elements=64)  # fmt: skip
        by_record = graft(llama.instruct, delta, tmp_path / "b", options)
        with pytest.raises(TypeError, match="not both"):
            graft(llama.instruct, delta, tmp_path / "c", options, alpha=2.0)
    assert_bitwise_equal(load_tensors(tmp_path / "b"), load_tensors(tmp_path / "a"))
    assert by_record["tensors"] == by_keywords["tensors"] and by_record["counts"] == by_keywords["counts"]
    assert by_record["policy"] == by_keywords["policy"] and by_record["policy"]["preset"] == "official"
    assert not (tmp_path / "c").exists()
