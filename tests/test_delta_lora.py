"""LoRA deltas: PEFT adapters grafted onto instruct, against PEFT's own merge and an independent torch oracle.

Exactness, stated per test: our arithmetic is W + s * (B @ A) in float32, rounded
once. With rank 1 the product has a single term, so any correct implementation
is bit-identical. With rank > 1 the r products are summed inside a matrix
multiply whose order differs between numpy's BLAS and torch, so the float32
update may differ in its last bit and the rounded result by at most one ulp.
One ulp also admits truncating instead of rounding, so each such test also checks
the output against the exact update: every element must be the correct rounding
of a value within the float32 error bound (`assert_rounded_from_exact`).
"""

import json
import math
import os
import subprocess
from pathlib import Path

import pytest
from chunk_fixtures import admissible_range, assert_correctly_rounded
from delta_fixtures import (  # noqa: F401
    LORA_TARGETS,
    _private_hash_cache,
    llama,
    load_tensors,
    lora_adapter,
    qwen2,
    qwen2_config,
    random_model,
    read_json,
    save,
)

from shadowft.engine.extraction import Delta, extract_delta
from shadowft.engine.grafting import graft
from shadowft.engine.layout import CheckpointError, DeltaError
from shadowft.engine.policy import Selection

torch = pytest.importorskip("torch")
peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

PREFIX = "base_model.model."
LLAMAFACTORY = Path(__file__).resolve().parent.parent / ".venvs" / "train" / "bin" / "llamafactory-cli"
pytestmark = pytest.mark.filterwarnings("ignore:.*(save_embedding_layers|tie_word_embeddings).*:UserWarning")


def ulps(a, b) -> int:
    """Largest distance in units in the last place (representable steps, across zero too) between two tensors."""
    assert a.dtype == b.dtype and a.shape == b.shape
    view, magnitude = {torch.bfloat16: (torch.int16, 0x7FFF), torch.float32: (torch.int32, 0x7FFFFFFF)}[a.dtype]

    def ordered(t):  # sign-magnitude bits -> integers in the order of the values
        bits = t.view(view).long()
        return torch.where(bits < 0, -(bits & magnitude), bits)

    return int((ordered(a) - ordered(b)).abs().max()) if a.numel() else 0


def peft_merged(instruct, adapter) -> dict:
    model = transformers.AutoModelForCausalLM.from_pretrained(instruct, dtype=torch.bfloat16)
    merged = peft.PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return {name: tensor.detach() for name, tensor in merged.state_dict().items()}


def lora_oracle(instruct, adapter, scaling: dict[str, float], alpha=1.0) -> dict:
    """W_I + alpha * s * B @ A in float32, rounded once, for every module in `scaling`."""
    weights, factors = load_tensors(instruct), load_file(adapter / "adapter_model.safetensors")
    for name, scale in scaling.items():
        module = PREFIX + name.removesuffix(".weight")
        a, b = factors[f"{module}.lora_A.weight"].float(), factors[f"{module}.lora_B.weight"].float()
        weights[name] = (weights[name].float() + alpha * ((b @ a) * scale)).to(weights[name].dtype)
    return weights


def assert_rounded_from_exact(ours, instruct, adapter, scaling: dict[str, float], alpha=1.0) -> None:
    """Every LoRA target of `scaling` is, element by element, a correct rounding of the exact (float64)
    W_I + alpha * s * B @ A (see chunk_fixtures.admissible_range), and the bound pins almost every
    element to one value: 1 ulp admits truncation, this does not."""
    weights, factors = load_tensors(instruct), load_file(adapter / "adapter_model.safetensors")
    transposed_layers = bool(read_json(adapter / "adapter_config.json").get("fan_in_fan_out"))
    pinned = count = 0
    for name, scale in scaling.items():
        module = PREFIX + name.removesuffix(".weight")
        embedding = f"{module}.lora_embedding_A" in factors
        a, b = (
            (factors[f"{module}.lora_embedding_A"], factors[f"{module}.lora_embedding_B"])
            if embedding
            else (factors[f"{module}.lora_A.weight"], factors[f"{module}.lora_B.weight"])
        )
        update = b.double() @ a.double()
        magnitude = b.double().abs() @ a.double().abs()
        if embedding or transposed_layers:
            update, magnitude = update.T, magnitude.T
        weight = weights[name].double()
        low, high = admissible_range(
            weight + alpha * scale * update,
            weight.abs() + abs(alpha * scale) * magnitude,
            rank=a.shape[0],
            out=weights[name].dtype,
        )
        pinned += assert_correctly_rounded(ours[name], low, high, name) * weight.numel()
        count += weight.numel()
    assert pinned / count > 0.99


def graft_adapter(base, instruct, adapter, out, **options):
    extract_delta(base, out.parent / f"{out.name}-delta", adapter=adapter, progress=False)
    return graft(instruct, out.parent / f"{out.name}-delta", out, progress=False, **options)


def test_matches_peft_merge_and_unload(llama, tmp_path):
    manifest = graft_adapter(llama.base, llama.instruct, llama.adapter, tmp_path / "out")
    ours, theirs = load_tensors(tmp_path / "out"), peft_merged(llama.instruct, llama.adapter)
    assert sorted(ours) == sorted(n for n in theirs if n != "lm_head.weight" or "lm_head.weight" in ours)
    assert max(ulps(ours[n], theirs[n]) for n in ours) <= 1  # rank 4: summation order, see module docstring
    assert_rounded_from_exact(ours, llama.instruct, llama.adapter, manifest["delta"]["scaling"])


@pytest.mark.slow
@pytest.mark.skipif(not LLAMAFACTORY.exists(), reason="the train environment (.venvs/train) is not built")
def test_matches_llamafactory_export(llama, tmp_path):
    """The official Shadow-FT recipe merges the base-trained adapter into instruct with llamafactory-cli export."""
    subprocess.run(
        [
            str(LLAMAFACTORY),
            "export",
            "--model_name_or_path",
            str(llama.instruct),
            "--adapter_name_or_path",
            str(llama.adapter),
            "--template",
            "default",
            "--finetuning_type",
            "lora",
            "--export_dir",
            str(tmp_path / "exported"),
        ],
        check=True,
        capture_output=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    manifest = graft_adapter(llama.base, llama.instruct, llama.adapter, tmp_path / "out")
    ours, theirs = load_tensors(tmp_path / "out"), load_tensors(tmp_path / "exported")
    assert sorted(ours) == sorted(theirs)
    assert max(ulps(ours[n], theirs[n]) for n in ours) <= 1  # rank 4: summation order, see module docstring
    assert_rounded_from_exact(ours, llama.instruct, llama.adapter, manifest["delta"]["scaling"])


def test_rank_one_is_bit_identical_to_the_oracle(llama, tmp_path):
    adapter = lora_adapter(llama.base, tmp_path / "adapter", seed=5, r=1, lora_alpha=3)
    manifest = graft_adapter(llama.base, llama.instruct, adapter, tmp_path / "out", alpha=0.8)
    scaling = manifest["delta"]["scaling"]
    assert set(scaling.values()) == {3.0}
    expected = lora_oracle(llama.instruct, adapter, scaling, alpha=0.8)
    ours = load_tensors(tmp_path / "out")
    assert all(torch.equal(ours[n].view(torch.int16), expected[n].view(torch.int16)) for n in expected)


def test_scaling_follows_rslora_and_rank_and_alpha_patterns(llama, tmp_path):
    adapter = lora_adapter(
        llama.base,
        tmp_path / "adapter",
        seed=6,
        r=4,
        lora_alpha=8,
        use_rslora=True,
        rank_pattern={"down_proj": 2},
        alpha_pattern={r"layers\.1\.self_attn\.q_proj": 3},
    )
    manifest = extract_delta(llama.base, tmp_path / "delta", adapter=adapter, progress=False)
    scaling = manifest["scaling"]
    assert scaling["model.layers.0.mlp.down_proj.weight"] == 8 / math.sqrt(2)
    assert scaling["model.layers.1.self_attn.q_proj.weight"] == 3 / 2
    assert scaling["model.layers.0.self_attn.q_proj.weight"] == 8 / 2
    entry = manifest["tensors"]["model.layers.0.mlp.down_proj.weight"]
    assert entry["parts"][0] | {"A": None, "B": None} == {
        "form": "lora",
        "A": None,
        "B": None,
        "rank": 2,
        "scale": 8 / math.sqrt(2),
        "layout": "standard",
    }
    graft(llama.instruct, tmp_path / "delta", tmp_path / "out", progress=False)
    ours, theirs = load_tensors(tmp_path / "out"), peft_merged(llama.instruct, adapter)
    assert max(ulps(ours[n], theirs[n]) for n in ours) <= 1
    assert_rounded_from_exact(ours, llama.instruct, adapter, scaling)


def test_bfloat16_factors(llama, tmp_path):
    """Adapters kept in bf16: PEFT rounds the update to bf16 before adding (two roundings), we round once."""
    model = transformers.AutoModelForCausalLM.from_pretrained(llama.base, dtype=torch.bfloat16)
    peft_model = peft.get_peft_model(
        model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=LORA_TARGETS), autocast_adapter_dtype=False
    )
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape) * 0.05)
    peft_model.save_pretrained(tmp_path / "adapter")
    assert (
        load_file(tmp_path / "adapter" / "adapter_model.safetensors")[
            PREFIX + "model.layers.0.self_attn.q_proj.lora_A.weight"
        ].dtype
        == torch.bfloat16
    )
    manifest = graft_adapter(llama.base, llama.instruct, tmp_path / "adapter", tmp_path / "out")
    ours = load_tensors(tmp_path / "out")
    expected = lora_oracle(llama.instruct, tmp_path / "adapter", manifest["delta"]["scaling"])
    assert max(ulps(ours[n], expected[n]) for n in ours) <= 1
    theirs = peft_merged(llama.instruct, tmp_path / "adapter")
    assert max(ulps(ours[n], theirs[n]) for n in ours) <= 1
    assert_rounded_from_exact(ours, llama.instruct, tmp_path / "adapter", manifest["delta"]["scaling"])


def test_graft_straight_from_the_adapter_equals_the_saved_delta(llama, tmp_path):
    graft_adapter(llama.base, llama.instruct, llama.adapter, tmp_path / "saved")
    with Delta.from_adapter(llama.base, llama.adapter) as delta:
        graft(llama.instruct, delta, tmp_path / "direct", progress=False)
    saved, direct = load_tensors(tmp_path / "saved"), load_tensors(tmp_path / "direct")
    assert all(torch.equal(saved[n].view(torch.int16), direct[n].view(torch.int16)) for n in saved)


def test_modules_to_save_and_embedding_lora(llama, tmp_path):
    """lm_head saved whole (delta = saved - base) and LoRA on the embeddings (PEFT's transposed layout)."""
    adapter = lora_adapter(
        llama.base, tmp_path / "adapter", seed=7, target_modules=["q_proj", "embed_tokens"], modules_to_save=["lm_head"]
    )
    factors = load_file(adapter / "adapter_model.safetensors")
    assert PREFIX + "model.embed_tokens.lora_embedding_A" in factors and PREFIX + "lm_head.weight" in factors
    manifest = graft_adapter(llama.base, llama.instruct, adapter, tmp_path / "out")
    ours, inst, B = load_tensors(tmp_path / "out"), load_tensors(llama.instruct), load_tensors(llama.base)
    scale = manifest["delta"]["scaling"]["model.embed_tokens.weight"]
    a = factors[PREFIX + "model.embed_tokens.lora_embedding_A"].float()
    b = factors[PREFIX + "model.embed_tokens.lora_embedding_B"].float()
    embed = "model.embed_tokens.weight"
    expected_embed = (inst[embed].float() + ((b @ a).T * scale)).bfloat16()
    assert ulps(ours[embed], expected_embed) <= 1
    assert_rounded_from_exact(ours, llama.instruct, adapter, manifest["delta"]["scaling"])
    head = "lm_head.weight"
    expected_head = (inst[head].float() + (factors[PREFIX + head].float() - B[head].float())).bfloat16()
    assert torch.equal(ours[head].view(torch.int16), expected_head.view(torch.int16))
    spec = read_json(tmp_path / "out-delta" / "manifest.json")["tensors"]
    assert spec[embed]["parts"][0]["layout"] == "transposed"
    assert spec[head]["parts"] == [{"form": "full", "tensor": head}]


def test_lora_bias_updates_the_bias(qwen2, tmp_path):
    adapter = lora_adapter(qwen2.base, tmp_path / "adapter", seed=8, target_modules=["q_proj"], lora_bias=True)
    manifest = graft_adapter(qwen2.base, qwen2.instruct, adapter, tmp_path / "out")
    ours, inst = load_tensors(tmp_path / "out"), load_tensors(qwen2.instruct)
    factors = load_file(adapter / "adapter_model.safetensors")
    name = "model.layers.1.self_attn.q_proj.bias"
    scale = manifest["delta"]["scaling"]["model.layers.1.self_attn.q_proj.weight"]
    expected = (inst[name].float() + factors[PREFIX + name.replace(".bias", ".lora_B.bias")].float() * scale).bfloat16()
    assert torch.equal(ours[name].view(torch.int16), expected.view(torch.int16))
    theirs = peft_merged(qwen2.instruct, adapter)
    assert ulps(ours[name], theirs[name]) <= 1


def test_official_preset_leaves_saved_modules_out(llama, tmp_path):
    adapter = lora_adapter(llama.base, tmp_path / "adapter", seed=9, modules_to_save=["lm_head"])
    with Delta.from_adapter(llama.base, adapter, selection=Selection("official")) as delta:
        manifest = graft(llama.instruct, delta, tmp_path / "out", preset="official", progress=False)
    assert manifest["tensors"]["lm_head.weight"] == "kept: not selected"
    assert manifest["counts"]["grafted"] == 14


# ------------------------------------------------------------- name mapping


def test_adapter_names_map_onto_differently_prefixed_checkpoints(llama, tmp_path):
    """A checkpoint saved without the 'model.' prefix (as by a bare LlamaModel)."""
    (tmp_path / "bare").mkdir()
    tensors = {name.removeprefix("model."): t for name, t in load_tensors(llama.base).items()}
    save_file(tensors, tmp_path / "bare" / "model.safetensors")
    manifest = extract_delta(tmp_path / "bare", tmp_path / "delta", adapter=llama.adapter, progress=False)
    assert "layers.0.self_attn.q_proj.weight" in manifest["tensors"]


@pytest.mark.bad_input("checkpoint", caught="job")
def test_ambiguous_or_unknown_targets_are_refused(llama, tmp_path):
    (tmp_path / "other").mkdir()
    save_file({"encoder.q.weight": torch.zeros(2, 2)}, tmp_path / "other" / "model.safetensors")
    with pytest.raises(DeltaError, match="targets 'model.layers.0.*which is not in the base model"):
        extract_delta(tmp_path / "other", tmp_path / "delta", adapter=llama.adapter)
    (tmp_path / "twice").mkdir()
    tensors = load_tensors(llama.base)
    tensors.update({"vision." + n: t.clone() for n, t in tensors.items()})
    save_file(tensors, tmp_path / "twice" / "model.safetensors")
    twin = tmp_path / "twin-adapter"
    twin.mkdir()
    (twin / "adapter_config.json").write_text((llama.adapter / "adapter_config.json").read_text())
    save_file(
        {
            k.replace(PREFIX + "model.", PREFIX): v
            for k, v in load_file(llama.adapter / "adapter_model.safetensors").items()
        },
        twin / "adapter_model.safetensors",
    )
    with pytest.raises(DeltaError, match="ambiguous"):
        extract_delta(tmp_path / "twice", tmp_path / "delta", adapter=twin)
    assert not (tmp_path / "delta").exists()


# ------------------------------------------------------------------ refusals


@pytest.mark.bad_input("checkpoint", caught="job")
def test_dora_is_refused_naming_the_key(llama, tmp_path):
    adapter = lora_adapter(llama.base, tmp_path / "adapter", seed=10, use_dora=True)
    with pytest.raises(DeltaError, match="use_dora=True is not supported"):
        extract_delta(llama.base, tmp_path / "delta", adapter=adapter)
    config = read_json(adapter / "adapter_config.json")
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": False}))
    with pytest.raises(DeltaError, match="lora_magnitude_vector.*DoRA"):
        extract_delta(llama.base, tmp_path / "delta", adapter=adapter)
    assert not (tmp_path / "delta").exists()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("peft_type", "IA3", "peft_type is 'IA3'"),
        ("init_lora_weights", "pissa_niter_4", "modifies the base weights"),
        ("layer_replication", [[0, 2]], "layer_replication"),
        ("r", 0, "r must be a positive number"),
        ("r", 3, "has rank 4 but adapter_config.json gives r=3"),
    ],
)
@pytest.mark.bad_input("checkpoint", caught="job")
def test_unrepresentable_adapter_configs_are_refused(llama, tmp_path, key, value, message):
    (tmp_path / "adapter").mkdir()
    config = {**read_json(llama.adapter / "adapter_config.json"), key: value}
    (tmp_path / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    (tmp_path / "adapter" / "adapter_model.safetensors").symlink_to(llama.adapter / "adapter_model.safetensors")
    with pytest.raises(DeltaError, match=message):
        extract_delta(llama.base, tmp_path / "delta", adapter=tmp_path / "adapter")


@pytest.mark.bad_input("checkpoint", caught="job")
def test_pickled_adapter_needs_opt_in(llama, tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text((llama.adapter / "adapter_config.json").read_text())
    torch.save(load_file(llama.adapter / "adapter_model.safetensors"), tmp_path / "adapter" / "adapter_model.bin")
    with pytest.raises(CheckpointError, match="allow_pickle"):
        extract_delta(llama.base, tmp_path / "delta", adapter=tmp_path / "adapter")
    extract_delta(llama.base, tmp_path / "delta", adapter=tmp_path / "adapter", allow_pickle=True, progress=False)
    graft(llama.instruct, tmp_path / "delta", tmp_path / "out", progress=False)
    graft_adapter(llama.base, llama.instruct, llama.adapter, tmp_path / "reference")
    ours, reference = load_tensors(tmp_path / "out"), load_tensors(tmp_path / "reference")
    assert all(torch.equal(ours[n].view(torch.int16), reference[n].view(torch.int16)) for n in ours)


@pytest.mark.bad_input("checkpoint", caught="job")
def test_not_an_adapter(llama, tmp_path):
    with pytest.raises(DeltaError, match="adapter_config.json missing"):
        extract_delta(llama.base, tmp_path / "delta", adapter=llama.tuned)


def test_tied_qwen2_pair(tmp_path):
    """A Qwen2 pair with tied embeddings and q/k/v biases, adapter on every projection."""
    base = save(random_model(qwen2_config(), seed=20), tmp_path / "base")
    instruct = save(random_model(qwen2_config(), seed=21), tmp_path / "instruct", "30KB")
    adapter = lora_adapter(base, tmp_path / "adapter", seed=22)
    manifest = graft_adapter(base, instruct, adapter, tmp_path / "out")
    ours, theirs = load_tensors(tmp_path / "out"), peft_merged(instruct, adapter)
    assert "lm_head.weight" not in ours
    assert max(ulps(ours[n], theirs[n]) for n in ours) <= 1
    assert_rounded_from_exact(ours, instruct, adapter, manifest["delta"]["scaling"])
