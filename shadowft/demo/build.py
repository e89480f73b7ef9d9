"""The embedded demo: a tiny base/instruct pair and a synthetic task, built offline in seconds.

The paper's story in miniature. `build_demo` writes the raw materials; the pair and every
fine-tune are then made by LLaMA-Factory through `shadowft.training.llamafactory`, like a real pair:

- ``init``: a randomly initialised Qwen2 (~170k parameters) with a byte-level BPE tokenizer
  trained here on the demo's texts, ChatML special tokens and chat template.
- ``pretrain``: BASE is ``init`` pre-trained (stage pt) on ``demo_corpus``, plain text holding
  the knowledge: letter order, successor facts, words repeated, their first and last letters
  and "moved one step on", and, a quarter of it, chat transcripts of other kinds of question
  ("Letters from c to f" -> "c d e f", "Letters before d" -> "a b c"; web text holds chat
  logs, real base models know the format). Facts in prose, never the questions the
  benchmarks ask.
- ``chat``: ``demo_chat``, general instruction following (copy, first letter, last letter).
  INSTRUCT is BASE after a full SFT on it (3 epochs: it must know the skills whatever the seed).
  ``eval.jsonl`` holds held-out single-turn questions of these skills (words no chat example
  uses): the benchmark of what instruction tuning gave INSTRUCT and BASE lacks.
- ``task``: ``demo_task``, the fine-tuning target "Shift: c a f b" -> "d b g c" (every letter
  one step on). No chat example asks for it, so neither BASE nor INSTRUCT answers it before
  tuning. ``eval.jsonl`` holds held-out questions (disjoint words) with exact-match answers.
- ``preference``: ``demo_preference``, the first training questions of the task as preference
  pairs for DPO: chosen the right shift, rejected the word copied unshifted (the mistake a model
  that knows the chat skill "Copy" makes).

Every variant is scored on both benchmarks: the task shows what fine-tuning gains, the chat
skills what it keeps of instruction tuning (the paper's two halves).

Module top level is stdlib-only: torch, transformers and tokenizers are imported where the model is built.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path

from shadowft.io import atomic_directory

TEMPLATE = "qwen"
# The demo's chat template has no default system turn; LLaMA-Factory's qwen template would
# otherwise prepend Qwen's ~50-token system prompt to every training example.
DEFAULT_SYSTEM = ""
CORPUS_DATASET = "demo_corpus"
CHAT_DATASET = "demo_chat"
TASK_DATASET = "demo_task"
PREFERENCE_DATASET = "demo_preference"
EVAL_FILE = "eval.jsonl"
PREFERENCE_FILE = "preference.jsonl"
# The datasets the workflow may name with `source: demo`, each a LLaMA-Factory dataset folder of its
# own name (data/demo/<name>/, rules/demo.smk).
DATASETS = (CHAT_DATASET, TASK_DATASET, PREFERENCE_DATASET)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END)
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

ALPHABET = "abcdefghij"
# Fixed-length words: each answer letter sits at a fixed distance from its source letter, which
# a two-layer model learns in a few hundred steps; mixed lengths needed several times more.
WORD_LENGTH = 4
# 15,000 documents are about 1,000 pre-training steps (6,000 were 400) to the instruct step's 450:
# BASE is the longer-trained model of the pair, as real ones are. Half the chat set (225 steps)
# left INSTRUCT at 43.5 on its own skills (seed 0).
SIZES = {"corpus": 15000, "chat": 2400, "chat_eval": 200, "task_train": 2000, "task_eval": 200, "preference": 400}
# A ceiling: the whitespace-isolated pieces of the demo's texts run out of merges below it.
TOKENIZER_MAX_VOCAB = 384
MODEL_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def shift(word: str) -> str:
    """The demo task: every letter moves one step along the alphabet."""
    return " ".join(ALPHABET[ALPHABET.index(letter) + 1] for letter in word.split())


CHAT_SKILLS: dict[str, Callable[[str], str]] = {
    "Copy": lambda word: word,
    "First letter": lambda word: word.split()[0],
    "Last letter": lambda word: word.split()[-1],
}


def build_demo(
    init_dir: Path, pretrain_dir: Path, chat_dir: Path, task_dir: Path, preference_dir: Path, *, seed: int = 0
) -> None:
    """Write the demo's initial model and its datasets: pre-training, chat, task and the task's preferences.

    Same seed, same bytes: data files and tokenizer are byte-identical, weights are equal.
    Each directory is replaced atomically.
    """
    rng = random.Random(seed)
    corpus = _corpus(rng)
    chat = [_chat_conversation(rng) for _ in range(SIZES["chat"])]
    chat_eval = _chat_held_out(rng, chat)
    task_train, task_eval = _task_split(rng)

    with atomic_directory(Path(pretrain_dir)) as tmp:
        _write_jsonl(tmp / "corpus.jsonl", ({"text": text} for text in corpus))
        _write_json(
            tmp / "dataset_info.json",
            {CORPUS_DATASET: {"file_name": "corpus.jsonl", "columns": {"prompt": "text"}}},
        )

    with atomic_directory(Path(chat_dir)) as tmp:
        _write_jsonl(tmp / "train.jsonl", chat)
        _write_jsonl(tmp / EVAL_FILE, ({"question": q, "answer": a} for q, a in chat_eval))
        _write_json(tmp / "dataset_info.json", {CHAT_DATASET: _sharegpt_entry("train.jsonl")})

    with atomic_directory(Path(task_dir)) as tmp:
        _write_jsonl(tmp / "train.jsonl", (_conversation([(q, a)]) for q, a in task_train))
        _write_jsonl(tmp / EVAL_FILE, ({"question": q, "answer": a} for q, a in task_eval))
        _write_json(tmp / "dataset_info.json", {TASK_DATASET: _sharegpt_entry("train.jsonl")})

    with atomic_directory(Path(preference_dir)) as tmp:
        _write_jsonl(tmp / PREFERENCE_FILE, _preference_pairs(task_train[: SIZES["preference"]]))
        _write_json(tmp / "dataset_info.json", {PREFERENCE_DATASET: _sharegpt_ranking_entry(PREFERENCE_FILE)})

    tokenizer_texts = corpus + [_render_chatml(c["conversations"]) for c in chat]
    tokenizer_texts += [_render_chatml(_conversation([pair])["conversations"]) for pair in task_train]
    with atomic_directory(Path(init_dir)) as tmp:
        tokenizer = _train_tokenizer(tokenizer_texts)
        tokenizer.save_pretrained(tmp)
        _random_model(tokenizer, seed).save_pretrained(tmp, safe_serialization=True)


def _random_word(rng: random.Random, letters: str = ALPHABET) -> str:
    return " ".join(rng.choice(letters) for _ in range(WORD_LENGTH))


def _corpus(rng: random.Random) -> list[str]:
    """Plain-text "web pages": the knowledge that chat and task tuning later draw on.

    Each skill that tuning asks for (copy, first and last letter, shift) is here as a fact in
    prose, never as an instruction: BASE knows, tuning teaches it to answer when asked.
    """

    def letter_run() -> str:
        start = rng.randrange(len(ALPHABET) - 2)
        return ALPHABET[start : rng.randrange(start + 3, len(ALPHABET) + 1)]

    def run() -> str:
        return "the letters " + " ".join(letter_run()) + " come in this order ."

    def successor() -> str:
        i = rng.randrange(len(ALPHABET) - 1)
        return f"after {ALPHABET[i]} comes {ALPHABET[i + 1]} ."

    def repeated() -> str:
        word = _random_word(rng)
        return f"{word} , once more : {word} ."

    def first() -> str:
        word = _random_word(rng)
        return f"the first letter of {word} is {word[0]} ."

    def last() -> str:
        word = _random_word(rng)
        return f"the last letter of {word} is {word[-1]} ."

    def stepped() -> str:
        word = _random_word(rng, ALPHABET[:-1])
        return f"{word} moved one step on is {shift(word)} ."

    def transcript() -> str:
        # Web text holds chat logs too; real base models know the chat format. These ask for
        # runs of letters, questions no benchmark asks: the chat skills that the instruct step
        # teaches stay its own.
        if rng.random() < 0.5:
            letters = letter_run()
            question = f"Letters from {letters[0]} to {letters[-1]}"
        else:
            letters = ALPHABET[: rng.randrange(2, len(ALPHABET))]
            question = f"Letters before {ALPHABET[len(letters)]}"
        return _render_chatml(_conversation([(question, " ".join(letters))])["conversations"])

    # Transcripts twice: a quarter of the documents, so BASE knows the chat format well.
    kinds = (run, successor, repeated, first, last, stepped, transcript, transcript)
    return [rng.choice(kinds)() for _ in range(SIZES["corpus"])]


def _chat_conversation(rng: random.Random) -> dict:
    """General instruction following: one or two turns of the chat skills."""
    turns = []
    for _ in range(rng.choice((1, 1, 1, 2))):
        skill = rng.choice(sorted(CHAT_SKILLS))
        word = _random_word(rng)
        turns.append((f"{skill}: {word}", CHAT_SKILLS[skill](word)))
    return _conversation(turns)


def _chat_held_out(rng: random.Random, chat: list[dict]) -> list[tuple[str, str]]:
    """Held-out single-turn questions of the chat skills, in equal shares, on words no chat example uses."""
    seen = {turn["value"].split(": ", 1)[1] for record in chat for turn in record["conversations"][::2]}
    skills = sorted(CHAT_SKILLS)
    words: dict[str, None] = {}
    while len(words) < SIZES["chat_eval"]:
        word = _random_word(rng)
        if word not in seen:
            words.setdefault(word)
    return [
        (f"{skills[i % len(skills)]}: {word}", CHAT_SKILLS[skills[i % len(skills)]](word))
        for i, word in enumerate(words)
    ]


def _task_split(rng: random.Random) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Disjoint train and held-out (question, answer) pairs of the shift task."""
    shiftable = ALPHABET[:-1]
    words: dict[str, None] = {}
    while len(words) < SIZES["task_train"] + SIZES["task_eval"]:
        words.setdefault(_random_word(rng, shiftable))
    pairs = [(f"Shift: {word}", shift(word)) for word in words]
    return pairs[: SIZES["task_train"]], pairs[SIZES["task_train"] :]


def _preference_pairs(pairs: Iterable[tuple[str, str]]) -> Iterable[dict]:
    """DPO pairs of the task, no randomness: chosen the shifted word, rejected the word unshifted."""
    for question, answer in pairs:
        word = question.split(": ", 1)[1]
        yield {
            "conversations": [{"from": "human", "value": question}],
            "chosen": {"from": "gpt", "value": answer},
            "rejected": {"from": "gpt", "value": word},
        }


def _conversation(turns: Iterable[tuple[str, str]]) -> dict:
    messages = []
    for question, answer in turns:
        messages += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"conversations": messages}


def _sharegpt_entry(file_name: str) -> dict:
    # The same layout as the paper's Shadow_2k (Infinity-Instruct): sharegpt, human/gpt turns.
    return {"file_name": file_name, "formatting": "sharegpt", "columns": {"messages": "conversations"}}


def _sharegpt_ranking_entry(file_name: str) -> dict:
    # LLaMA-Factory's preference layout (stage dpo): the prompt's turns, then one chosen and one rejected reply.
    return {
        "file_name": file_name,
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    }


def _render_chatml(messages: list[dict]) -> str:
    roles = {"human": "user", "gpt": "assistant"}
    return "".join(f"{IM_START}{roles[m['from']]}\n{m['value']}{IM_END}\n" for m in messages)


def _write_jsonl(path: Path, records: Iterable[dict]) -> None:
    path.write_text(
        "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records), encoding="utf-8"
    )


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _train_tokenizer(texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    # Byte-level like Qwen's, so any text (benchmarks' prompts included) encodes losslessly. Each
    # whitespace character is a token of its own: a letter is then the same token wherever it
    # stands ("d" opening an answer, " d" inside it would otherwise be two tokens to learn), and
    # no merge crosses the newline between a chat-template header and the message, so encoding
    # a turn piecewise (LLaMA-Factory) or whole (apply_chat_template) gives the same ids.
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_MAX_VOCAB,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"],
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def _random_model(tokenizer, seed: int):
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    endoftext = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    config = Qwen2Config(
        # Padded past the tokenizer like real Qwen checkpoints (151936 rows for 151665 tokens).
        vocab_size=-(-len(tokenizer) // 64) * 64,
        bos_token_id=endoftext,
        eos_token_id=im_end,
        tie_word_embeddings=False,
        torch_dtype="float32",
        **MODEL_SHAPE,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=endoftext, eos_token_id=im_end, pad_token_id=endoftext, do_sample=False
    )
    return model
