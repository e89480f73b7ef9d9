"""The embedded demo's builder: determinism, data layout, tokenizer and chat template."""

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from shadowft.demo import build as demo

DATA_FILES = {
    "pretrain": ["corpus.jsonl", "dataset_info.json"],
    "demo_chat": ["dataset_info.json", "eval.jsonl", "train.jsonl"],
    "demo_task": ["dataset_info.json", "eval.jsonl", "train.jsonl"],
    "demo_preference": ["dataset_info.json", "preference.jsonl"],
}
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"]


def build(root, seed=0):
    demo.build_demo(*(root / folder for folder in ("init", *DATA_FILES)), seed=seed)
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build(tmp_path_factory.mktemp("demo"))


@pytest.fixture(scope="module")
def tokenizer(built):
    return AutoTokenizer.from_pretrained(built / "init")


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_same_seed_gives_the_same_bytes_and_weights(built, tmp_path):
    again = build(tmp_path)
    for folder, names in DATA_FILES.items():
        for name in names:
            assert (again / folder / name).read_bytes() == (built / folder / name).read_bytes(), name
    for name in TOKENIZER_FILES + ["config.json", "generation_config.json"]:
        assert (again / "init" / name).read_bytes() == (built / "init" / name).read_bytes(), name
    first, second = load_file(built / "init" / "model.safetensors"), load_file(again / "init" / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_another_seed_gives_other_data_and_weights(built, tmp_path):
    other = build(tmp_path, seed=1)
    for folder in ("demo_chat", "demo_task"):
        assert (other / folder / "eval.jsonl").read_bytes() != (built / folder / "eval.jsonl").read_bytes()
    first, second = load_file(built / "init" / "model.safetensors"), load_file(other / "init" / "model.safetensors")
    assert not torch.equal(first["model.layers.0.mlp.up_proj.weight"], second["model.layers.0.mlp.up_proj.weight"])


def test_rebuilding_replaces_the_folders_whole(tmp_path):
    build(tmp_path)
    (tmp_path / "demo_task" / "stale.jsonl").write_text("{}\n")
    build(tmp_path)
    assert sorted(p.name for p in (tmp_path / "demo_task").iterdir()) == DATA_FILES["demo_task"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["init", *DATA_FILES])


def test_dataset_info_registers_the_llamafactory_datasets(built):
    pretrain = json.loads((built / "pretrain" / "dataset_info.json").read_text())
    chat = json.loads((built / "demo_chat" / "dataset_info.json").read_text())
    task = json.loads((built / "demo_task" / "dataset_info.json").read_text())
    preference = json.loads((built / "demo_preference" / "dataset_info.json").read_text())
    assert pretrain == {demo.CORPUS_DATASET: {"file_name": "corpus.jsonl", "columns": {"prompt": "text"}}}
    sharegpt = {"formatting": "sharegpt", "columns": {"messages": "conversations"}}
    assert chat == {demo.CHAT_DATASET: {"file_name": "train.jsonl", **sharegpt}}
    ranking = {
        "file_name": "preference.jsonl",
        "formatting": "sharegpt",
        "ranking": True,
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    }
    assert task == {demo.TASK_DATASET: {"file_name": "train.jsonl", **sharegpt}}
    assert preference == {demo.PREFERENCE_DATASET: ranking}
    # The workflow finds a `source: demo` dataset in the folder of its name, whose dataset_info.json registers it.
    for name in demo.DATASETS:
        assert name in json.loads((built / name / "dataset_info.json").read_text())


def test_preference_pairs_prefer_the_shift_to_the_copy(built):
    pairs = read_jsonl(built / "demo_preference" / demo.PREFERENCE_FILE)
    train = read_jsonl(built / "demo_task" / "train.jsonl")
    assert len(pairs) == demo.SIZES["preference"]
    for pair, example in zip(pairs, train, strict=False):
        question, answer = (turn["value"] for turn in example["conversations"])
        word = question.removeprefix("Shift: ")
        assert pair["conversations"] == [{"from": "human", "value": question}]
        assert pair["chosen"] == {"from": "gpt", "value": answer} and answer == demo.shift(word)
        assert pair["rejected"] == {"from": "gpt", "value": word} != pair["chosen"]


def test_corpus_is_plain_text_and_chats_are_human_gpt_turns(built):
    corpus = read_jsonl(built / "pretrain" / "corpus.jsonl")
    assert len(corpus) == demo.SIZES["corpus"] and all(set(doc) == {"text"} for doc in corpus)
    for path in (built / "demo_chat" / "train.jsonl", built / "demo_task" / "train.jsonl"):
        for record in read_jsonl(path):
            roles = [turn["from"] for turn in record["conversations"]]
            assert roles == ["human", "gpt"] * (len(roles) // 2) and roles


def test_eval_is_held_out_and_answers_are_the_task(built):
    train = {
        r["conversations"][0]["value"]: r["conversations"][1]["value"]
        for r in read_jsonl(built / "demo_task" / "train.jsonl")
    }
    held_out = read_jsonl(built / "demo_task" / "eval.jsonl")
    assert len(train) == demo.SIZES["task_train"] and len(held_out) == demo.SIZES["task_eval"]
    assert not train.keys() & {r["question"] for r in held_out}
    for question, answer in [*train.items(), *((r["question"], r["answer"]) for r in held_out)]:
        word = question.removeprefix("Shift: ")
        assert answer == demo.shift(word) and len(word.split()) == demo.WORD_LENGTH


def test_the_task_is_not_in_the_chat_data(built):
    chat = (built / "demo_chat" / "train.jsonl").read_text()
    assert "Shift" not in chat


def test_chat_benchmark_is_held_out_and_answers_are_the_skills(built):
    trained_words = {
        turn["value"].split(": ", 1)[1]
        for record in read_jsonl(built / "demo_chat" / "train.jsonl")
        for turn in record["conversations"][::2]
    }
    held_out = read_jsonl(built / "demo_chat" / "eval.jsonl")
    assert len(held_out) == demo.SIZES["chat_eval"]
    skills = [record["question"].split(": ", 1)[0] for record in held_out]
    words = [record["question"].split(": ", 1)[1] for record in held_out]
    assert len(set(words)) == len(words) and not trained_words & set(words)
    # Every skill in equal shares, each answer computed independently of CHAT_SKILLS.
    assert {skill: skills.count(skill) for skill in set(skills)} == {
        skill: demo.SIZES["chat_eval"] // 3 + (i < demo.SIZES["chat_eval"] % 3)
        for i, skill in enumerate(sorted(["Copy", "First letter", "Last letter"]))
    }
    by_skill = {"Copy": lambda w: w, "First letter": lambda w: w[0], "Last letter": lambda w: w[-1]}
    for skill, word, record in zip(skills, words, held_out, strict=True):
        assert record["answer"] == by_skill[skill](word)


def test_base_learns_no_chat_skill_from_its_corpus(built):
    """The corpus holds chat transcripts (the format), but never a chat skill's question."""
    corpus = (built / "pretrain" / "corpus.jsonl").read_text()
    assert demo.IM_START in corpus and "Letters from" in corpus and "Letters before" in corpus
    for skill in demo.CHAT_SKILLS:
        assert f"{skill}:" not in corpus
    assert "Shift" not in corpus


def test_shift_moves_every_letter_one_step_on():
    assert demo.shift("a c i b") == "b d j c"


def test_tokenizer_round_trips_any_text(tokenizer):
    for text in ["Shift: c a f b", "the letters a b c come in this order .", "Zürich 42 — naïve\ttabs\n\nend", "hello"]:
        assert tokenizer.decode(tokenizer(text)["input_ids"]) == text


def test_every_letter_is_one_token_wherever_it_stands(tokenizer):
    for letter in demo.ALPHABET:
        ids = tokenizer(f"{letter} {letter}\n{letter}")["input_ids"]
        tokens = tokenizer.convert_ids_to_tokens(ids)
        assert tokens[0] == tokens[2] == tokens[4] == letter


def test_special_tokens_and_inputs(tokenizer):
    assert tokenizer.eos_token == demo.IM_END
    assert tokenizer.pad_token == demo.ENDOFTEXT
    assert tokenizer.bos_token is None
    assert tokenizer.model_input_names == ["input_ids", "attention_mask"]
    for token in demo.SPECIAL_TOKENS:
        assert tokenizer.convert_ids_to_tokens(tokenizer(token)["input_ids"]) == [token]


def test_chat_template_is_llamafactory_qwen_without_a_system_turn(tokenizer):
    messages = [
        {"role": "user", "content": "Copy: a b c d"},
        {"role": "assistant", "content": "a b c d"},
        {"role": "user", "content": "Shift: a b c d"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # LLaMA-Factory's qwen slots: format_user then format_assistant, no system when default_system is "".
    user = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    expected = user.format("Copy: a b c d") + "a b c d<|im_end|>\n" + user.format("Shift: a b c d")
    assert prompt == expected
    with_system = [{"role": "system", "content": "Be brief."}, *messages]
    assert tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n" + expected
    )


def test_piecewise_encoding_matches_whole_encoding(tokenizer):
    # LLaMA-Factory encodes the prompt and the answer separately; evaluation encodes the whole text.
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Shift: a b c d"}], tokenize=False, add_generation_prompt=True
    )
    answer = "b c d e<|im_end|>\n"
    assert tokenizer(prompt)["input_ids"] + tokenizer(answer)["input_ids"] == tokenizer(prompt + answer)["input_ids"]


def test_model_loads_with_im_end_as_eos_and_generates_deterministically(built, tokenizer):
    # Stopping at <|im_end|> needs a trained model: tests/test_demo_run.py checks it on every variant.
    model = AutoModelForCausalLM.from_pretrained(built / "init")
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size >= len(tokenizer) and model.config.vocab_size % 64 == 0
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids(demo.IM_END)
    generation = GenerationConfig.from_pretrained(built / "init")
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids(demo.IM_END)
    assert generation.pad_token_id == tokenizer.pad_token_id
    assert not generation.do_sample
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Shift: a b c d"}], add_generation_prompt=True, return_tensors="pt"
    )
    first = model.generate(prompt, max_new_tokens=4)
    assert torch.equal(first, model.generate(prompt, max_new_tokens=4))
