"""A full delta approximated by a PEFT LoRA adapter (truncated SVD)."""

import math

import pytest
from delta_fixtures import _private_hash_cache, llama, load_tensors, read_json  # noqa: F401

from shadowft.cli import main
from shadowft.engine.extraction import extract_delta
from shadowft.engine.grafting import graft
from shadowft.engine.layout import DeltaError
from shadowft.engine.lowrank import delta_to_lora

torch = pytest.importorskip("torch")


@pytest.fixture
def full_delta(llama, tmp_path):
    extract_delta(llama.base, tmp_path / "delta", tuned=llama.tuned, progress=False)
    return tmp_path / "delta"


def test_full_rank_reconstructs_the_delta(llama, full_delta, tmp_path):
    report = delta_to_lora(full_delta, tmp_path / "adapter", rank=64, progress=False)
    assert report["overall_relative_error"] < 1e-5
    shapes = {name.removesuffix(".weight"): t.shape for name, t in load_tensors(llama.base).items()}
    assert all(info["rank"] == min(shapes[m]) for m, info in report["modules"].items())  # capped by the size
    assert set(report["left_out"]) == {
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
        *(f"model.layers.{i}.{n}_layernorm.weight" for i in (0, 1) for n in ("input", "post_attention")),
    }
    # the adapter grafts the linear layers like the full delta does, up to float32 rounding of B @ A:
    # within one bf16 ulp (relative 2^-8; values near zero may even cross zero, hence the small atol)
    graft(llama.instruct, full_delta, tmp_path / "full", include=["_proj"], progress=False)
    main(
        [
            "graft",
            "--instruct",
            str(llama.instruct),
            "--base",
            str(llama.base),
            "--adapter",
            str(tmp_path / "adapter"),
            "--out",
            str(tmp_path / "lora"),
            "--no-progress",
        ]
    )
    full, lora = load_tensors(tmp_path / "full"), load_tensors(tmp_path / "lora")
    for name in full:
        assert torch.allclose(full[name].float(), lora[name].float(), rtol=2**-7, atol=1e-6), name


def test_energy_picks_ranks_per_module_and_peft_loads_the_adapter(llama, full_delta, tmp_path):
    report = delta_to_lora(full_delta, tmp_path / "adapter", energy=0.5, progress=False)
    for info in report["modules"].values():
        assert info["energy_kept"] >= 0.5 and info["rank"] < 16
        assert info["relative_error"] == pytest.approx(math.sqrt(1 - info["energy_kept"]), rel=1e-3)
    assert read_json(tmp_path / "adapter" / "shadowft_lowrank.json") == report
    config = read_json(tmp_path / "adapter" / "adapter_config.json")
    assert config["lora_alpha"] == config["r"]

    import peft
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(llama.base, dtype=torch.float32)
    merged = peft.PeftModel.from_pretrained(model, tmp_path / "adapter").merge_and_unload().state_dict()
    base, tuned = load_tensors(llama.base), load_tensors(llama.tuned)
    name = "model.layers.0.mlp.up_proj.weight"
    delta = tuned[name].float() - base[name].float()
    approx = merged[name] - base[name].float()
    error = float((delta - approx).norm() / delta.norm())
    module = report["modules"][name.removesuffix(".weight")]
    assert error == pytest.approx(module["relative_error"], rel=1e-3)


def test_bad_requests(full_delta, tmp_path, llama):
    with pytest.raises(DeltaError, match="exactly one of rank or energy"):
        delta_to_lora(full_delta, tmp_path / "a")
    with pytest.raises(DeltaError, match="energy must be in"):
        delta_to_lora(full_delta, tmp_path / "a", energy=1.5)
    extract_delta(llama.base, tmp_path / "lora-delta", adapter=llama.adapter, progress=False)
    with pytest.raises(DeltaError, match="LoRA delta already"):
        delta_to_lora(tmp_path / "lora-delta", tmp_path / "a", rank=2)
    assert not (tmp_path / "a").exists()
