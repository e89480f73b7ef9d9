"""A chat model whose answer is known in advance, for scoring real OpenCompass runs to an exact value.

A random model's answers are whatever they are; a benchmark's score then cannot be
predicted. This model's final norm has weight 0, so every logit is 0 and greedy decoding
picks the first token of the vocabulary at every step (argmax returns the first maximum):
whatever it is asked, it answers `answer` repeated, as many times as it may write tokens.
A data set written with some answers equal to that one and the others not has a score known
before the run.
"""

from __future__ import annotations

from pathlib import Path

# The chat template OpenCompass applies to the HUMAN turn (HuggingFacewithChatTemplate).
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def constant_answer_model(directory: Path, answer: str, *, max_seq_len: int = 16384) -> Path:
    """Write a tiny Qwen2 chat model (with its word-level tokenizer) that always answers `answer`; its
    `max_seq_len` positions (default the paper's window) hold a few-shot prompt whole."""
    import torch
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {answer: 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_input_names=["input_ids", "attention_mask"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)

    config = transformers.Qwen2Config(
        vocab_size=len(vocab),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=max_seq_len,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=2,
        pad_token_id=1,
    )
    torch.manual_seed(0)
    model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():
        model.model.norm.weight.zero_()
    model.save_pretrained(directory, safe_serialization=True)
    return directory


def evaluate_in_eval_env(eval_python: Path, root: Path, cwd: Path, model_dir: Path, benchmark: dict, *extra: str):
    """`python -m shadowft.evaluation evaluate` in the eval environment, writing out/scores.csv under `cwd`."""
    import json
    import os
    import subprocess

    command = [
        str(eval_python),
        "-m",
        "shadowft.evaluation",
        "evaluate",
        "--model",
        str(model_dir),
        "--benchmark-json",
        json.dumps(benchmark),
        "--work-dir",
        "work",
        "--scores",
        "out/scores.csv",
        *extra,
    ]
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
