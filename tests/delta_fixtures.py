"""Tiny random Llama / Qwen2 model families for the delta-engine tests.

A family is a base model, a "fine-tuned" base (base plus a small random
update), an instruct model (base plus a different update) and a LoRA adapter
trained-like on the base (random nonzero A and B). Each model is saved by
transformers with its own shard size, so the three inputs are split
differently. Built once per test session. torch, transformers and peft are imported inside
the helpers, so a test module that needs none of them starts fast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass(frozen=True)
class Family:
    base: Path
    tuned: Path
    instruct: Path
    adapter: Path


def llama_config(**overrides):
    import transformers

    settings = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    settings.update(overrides)
    return transformers.LlamaConfig(**settings)


def qwen2_config(**overrides):
    import transformers

    settings = dict(
        vocab_size=96,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    settings.update(overrides)
    return transformers.Qwen2Config(**settings)


def random_model(config, seed: int, dtype: str = "bfloat16"):
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        for parameter in model.parameters():  # norms start at 1 and biases at 0: make every tensor nonzero
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model.to(getattr(torch, dtype))


def perturbed(model, seed: int, scale: float):
    """A copy of `model` with every parameter moved by a relative random update."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    copy = type(model)(model.config).to(model.dtype)
    copy.load_state_dict(model.state_dict())
    with torch.no_grad():
        for parameter in copy.parameters():
            noise = torch.randn(parameter.shape, generator=generator) * scale
            parameter.copy_((parameter.float() * (1 + noise) + noise * 0.01).to(parameter.dtype))
    return copy


def save(model, path: Path, shard_size: str | None = None) -> Path:
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, safe_serialization=True, **kwargs)
    return path


def save_tokenizer(path: Path, vocab_size: int) -> None:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.save_pretrained(path)


def lora_adapter(base_path: Path, path: Path, *, seed: int, **config) -> Path:
    """A LoRA adapter on the model at base_path with random, nonzero A and B (as after training)."""
    import peft
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.bfloat16)
    settings = dict(r=4, lora_alpha=8, target_modules=LORA_TARGETS, lora_dropout=0.0)
    settings.update(config)
    peft_model = peft.get_peft_model(model, peft.LoraConfig(**settings))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                parameter.copy_(
                    torch.randn(parameter.shape, generator=generator).to(parameter.dtype) * 0.05
                    + (parameter if "modules_to_save" in name else 0)
                )
    peft_model.save_pretrained(path)
    return path


def build_family(root: Path, config, *, seed: int = 0) -> Family:
    base_model = random_model(config, seed)
    base = save(base_model, root / "base", "24KB")
    tuned = save(perturbed(base_model, seed + 1, 0.02), root / "tuned")
    instruct = save(perturbed(base_model, seed + 2, 0.05), root / "instruct", "40KB")
    save_tokenizer(instruct, config.vocab_size)
    adapter = lora_adapter(base, root / "adapter", seed=seed + 3)
    return Family(base, tuned, instruct, adapter)


@pytest.fixture(scope="session")
def llama(tmp_path_factory) -> Family:
    """Untied Llama family; the three checkpoints are sharded differently."""
    return build_family(tmp_path_factory.mktemp("llama"), llama_config())


@pytest.fixture(scope="session")
def qwen2(tmp_path_factory) -> Family:
    """Qwen2 family with q/k/v biases and tied embeddings (no lm_head tensor)."""
    return build_family(tmp_path_factory.mktemp("qwen2"), qwen2_config(), seed=10)


@pytest.fixture(autouse=True)
def _private_hash_cache(tmp_path_factory, monkeypatch):
    """Keep the sha256 cache out of the user's home: in this session's temporary directory."""
    monkeypatch.setenv("SHADOWFT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "sha256-cache"))


def load_tensors(path: Path) -> dict:
    """Every tensor of a model folder (any sharding) as torch tensors."""
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(path.glob("*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def read_json(path: Path):
    return json.loads(path.read_text())
