"""Chat-template arguments set inside a view of the model: what the template renders equals
transformers' apply_chat_template called with the arguments, for every place a template lives."""

import json

import pytest
import transformers
from family_fixtures import FAMILIES, tiny_tokenizer

from shadowft.evaluation.__main__ import main as opencompass_main
from shadowft.evaluation.chat_templates import template_prefix, with_template_defaults

MESSAGES = [{"role": "user", "content": "Shift: a b"}]


def rendered(folder, **arguments):
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    return tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False, **arguments)


@pytest.fixture
def qwen3_folder(tmp_path):
    folder = tmp_path / "qwen3"
    tiny_tokenizer(FAMILIES["qwen3"]).save_pretrained(folder)
    (folder / "model.safetensors").write_bytes(b"weights stand-in")
    return folder


def test_the_view_renders_as_if_the_arguments_were_passed(qwen3_folder, tmp_path):
    assert rendered(qwen3_folder) != rendered(qwen3_folder, enable_thinking=False), "the fixture must react"
    view = with_template_defaults(qwen3_folder, tmp_path / "view", {"enable_thinking": False})
    assert rendered(view) == rendered(qwen3_folder, enable_thinking=False)
    assert (view / "model.safetensors").is_symlink(), "weights are linked, not copied"
    assert rendered(qwen3_folder) != rendered(view), "the model folder itself is untouched"


def test_a_template_in_tokenizer_config_is_changed_too(qwen3_folder, tmp_path):
    template = (
        (qwen3_folder / "chat_template.jinja").read_text() if (qwen3_folder / "chat_template.jinja").exists() else None
    )
    if template is not None:  # move the template into tokenizer_config.json, as older checkpoints keep it
        (qwen3_folder / "chat_template.jinja").unlink()
        settings = json.loads((qwen3_folder / "tokenizer_config.json").read_text())
        settings["chat_template"] = template
        (qwen3_folder / "tokenizer_config.json").write_text(json.dumps(settings))
    view = with_template_defaults(qwen3_folder, tmp_path / "view", {"enable_thinking": False})
    assert rendered(view) == rendered(qwen3_folder, enable_thinking=False)


@pytest.mark.parametrize(
    "arguments, message",
    [({"not a name": True}, "not a template variable name"), ({"x": [1]}, "not a string, number or boolean")],
)
def test_bad_arguments_are_named(arguments, message):
    with pytest.raises(ValueError, match=message):
        template_prefix(arguments)


def test_a_folder_without_a_chat_template_is_refused(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no chat template"):
        with_template_defaults(tmp_path / "model", tmp_path / "view", {"enable_thinking": False})


def test_the_command_line_takes_the_arguments_as_json(tmp_path, capsys):
    code = opencompass_main(
        [
            "evaluate",
            "--model",
            str(tmp_path / "missing"),
            "--benchmark-json",
            '{"name": "b", "kind": "custom", "path": "x.jsonl"}',
            "--work-dir",
            str(tmp_path / "w"),
            "--scores",
            str(tmp_path / "s.csv"),
            "--chat-template-kwargs",
            '{"enable_thinking": false}',
        ]
    )
    assert code == 1 and "is not a directory" in capsys.readouterr().err
