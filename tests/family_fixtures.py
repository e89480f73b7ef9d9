"""Tiny random models of real families' architectures, for running a family through the workflow.

Each builder makes a BASE and an INSTRUCT (BASE plus a small perturbation) with the family's
transformers classes at toy sizes, so the tensor names and wrappers are the real ones
(Gemma-3: Gemma3ForConditionalGeneration with a SigLIP vision tower and the projector), and a
byte-level BPE tokenizer built with the `tokenizers` library that carries the family's special
tokens and a chat template of the family's format. No network.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "copy the word and say it again",
    "what is the first letter of apple",
    "shift each letter one step on",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "0 1 2 3 4 5 6 7 8 9 + - * / = ? ! . , : ;",
]
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
PERTURBATION = 0.01


@dataclass(frozen=True)
class TinyFamily:
    """How to build one family's tiny pair: its special tokens, chat template and model."""

    special_tokens: list[str]
    chat_template: str
    tokens: dict[str, str | None]  # bos_token, eos_token, pad_token, unk_token
    build_model: Callable[[dict[str, int]], torch.nn.Module]
    extra_special_tokens: dict[str, str] = field(default_factory=dict)
    processor: bool = False


QWEN3_CHAT = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)
LLAMA3_CHAT = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)
GEMMA3_CHAT = (
    "{{ bos_token }}{%- for message in messages %}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{%- endfor %}{%- if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{%- endif %}"
)
MISTRAL_CHAT = (
    "{{- bos_token }}{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{- '[INST] ' + message['content'] + '[/INST]' }}"
    "{%- else %}{{- ' ' + message['content'] + eos_token }}{%- endif %}{%- endfor %}"
)


def _ids(tokenizer: transformers.PreTrainedTokenizerFast) -> dict[str, int | None]:
    return {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }


def _qwen3(ids):
    config = transformers.Qwen3Config(
        vocab_size=ids["vocab_size"],
        head_dim=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        **TINY,
    )
    return transformers.Qwen3ForCausalLM(config)


def _llama31(ids):
    config = transformers.LlamaConfig(
        vocab_size=ids["vocab_size"],
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=500000.0,
        rope_scaling={
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 128,
        },
        tie_word_embeddings=False,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        **TINY,
    )
    return transformers.LlamaForCausalLM(config)


def _mistral(ids):
    config = transformers.MistralConfig(
        vocab_size=ids["vocab_size"],
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=None,
        tie_word_embeddings=False,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        **TINY,
    )
    return transformers.MistralForCausalLM(config)


def _gemma3(ids):
    text = transformers.Gemma3TextConfig(
        vocab_size=ids["vocab_size"],
        head_dim=8,
        num_key_value_heads=2,
        max_position_embeddings=512,
        sliding_window=16,
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
        **TINY,
    )
    vision = transformers.SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    config = transformers.Gemma3Config(
        text_config=text,
        vision_config=vision,
        mm_tokens_per_image=4,
        image_token_index=ids["image_token_id"],
        boi_token_index=ids["boi_token_id"],
        eoi_token_index=ids["eoi_token_id"],
    )
    return transformers.Gemma3ForConditionalGeneration(config)


FAMILIES: dict[str, TinyFamily] = {
    "qwen3": TinyFamily(
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"],
        chat_template=QWEN3_CHAT,
        tokens={"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None},
        build_model=_qwen3,
    ),
    "llama3": TinyFamily(
        special_tokens=[
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        chat_template=LLAMA3_CHAT,
        tokens={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>", "pad_token": None, "unk_token": None},
        build_model=_llama31,
    ),
    "mistral": TinyFamily(
        special_tokens=["<unk>", "<s>", "</s>", "[INST]", "[/INST]"],
        chat_template=MISTRAL_CHAT,
        tokens={"bos_token": "<s>", "eos_token": "</s>", "pad_token": None, "unk_token": "<unk>"},
        build_model=_mistral,
    ),
    "gemma3": TinyFamily(
        special_tokens=[
            "<pad>",
            "<eos>",
            "<bos>",
            "<unk>",
            "<start_of_turn>",
            "<end_of_turn>",
            "<start_of_image>",
            "<end_of_image>",
            "<image_soft_token>",
        ],
        chat_template=GEMMA3_CHAT,
        tokens={"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>"},
        build_model=_gemma3,
        extra_special_tokens={
            "boi_token": "<start_of_image>",
            "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
        processor=True,
    ),
}


def tiny_tokenizer(family: TinyFamily) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer over a small corpus, with the family's special tokens first."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=family.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    wrapped = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        chat_template=family.chat_template,
        model_input_names=["input_ids", "attention_mask"],
        extra_special_tokens=family.extra_special_tokens,
        **{key: value for key, value in family.tokens.items() if value is not None},
    )
    return wrapped


def build_tiny_pair(name: str, folder: Path, *, seed: int = 0) -> tuple[Path, Path]:
    """BASE and INSTRUCT of the tiny `name` family ("qwen3", "llama3", "mistral", "gemma3") under `folder`."""
    family = FAMILIES[name]
    tokenizer = tiny_tokenizer(family)
    ids = {**_ids(tokenizer), "vocab_size": len(tokenizer)}
    for token_name, token in family.extra_special_tokens.items():
        ids[f"{token_name}_id"] = tokenizer.convert_tokens_to_ids(token)
    torch.manual_seed(seed)
    model = family.build_model(ids).to(torch.float32)
    base, instruct = folder / "base", folder / "instruct"
    _save(model, tokenizer, family, base)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(PERTURBATION * torch.randn(parameter.shape, generator=generator))
    _save(model, tokenizer, family, instruct)
    return base, instruct


def _save(model, tokenizer, family: TinyFamily, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    if family.processor:
        image_processor = transformers.Gemma3ImageProcessor(size={"height": 28, "width": 28})
        processor = transformers.Gemma3Processor(
            image_processor=image_processor, tokenizer=tokenizer, chat_template=family.chat_template, image_seq_length=4
        )
        processor.save_pretrained(folder)


def tiny_sft_dataset(folder: Path, *, rows: int = 4) -> Path:
    """A LLaMA-Factory sharegpt dataset folder `tiny` with a few turns, and eval.jsonl for a custom benchmark."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = [
        {
            "conversations": [
                {"from": "human", "value": f"copy the word {word}"},
                {"from": "gpt", "value": word},
            ]
        }
        for word in ("fox", "dog", "apple", "letter", "word", "step")[:rows]
    ]
    (folder / "train.json").write_text(json.dumps(examples))
    (folder / "dataset_info.json").write_text(
        json.dumps(
            {"tiny": {"file_name": "train.json", "formatting": "sharegpt", "columns": {"messages": "conversations"}}}
        )
    )
    (folder / "eval.jsonl").write_text(
        "".join(json.dumps({"question": f"copy the word {word}", "answer": word}) + "\n" for word in ("fox", "dog"))
    )
    return folder
