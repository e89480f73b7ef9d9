"""A model folder whose chat template renders with given arguments by default.

Some families need arguments when their chat template is rendered: Qwen3 thinks unless
``enable_thinking=False`` is passed. Only OpenCompass's vLLM wrapper can pass such
arguments (0.5.4); the Hugging Face and TurboMind wrappers call ``apply_chat_template``
without them. So evaluation scores a view of the model instead: a folder of links to the
model's files, except that every chat template in it starts by setting those arguments
(``{%- set enable_thinking = false -%}``), which the template's own tests then see.
Weights are linked, never copied.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shadowft.io import atomic_write_text

#: Files that may hold a chat template: a Jinja file, the tokenizer's config, a processor's.
TEMPLATE_FILES = ("chat_template.jinja", "tokenizer_config.json", "chat_template.json")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def template_prefix(arguments: Mapping[str, Any]) -> str:
    """Jinja statements that set each argument, e.g. ``{%- set enable_thinking = false -%}``."""
    statements = []
    for name, value in arguments.items():
        if not _NAME.match(name):
            raise ValueError(f"chat_template_kwargs: {name!r} is not a template variable name")
        if not isinstance(value, str | int | float | bool) or value is None:
            raise ValueError(f"chat_template_kwargs.{name}: {value!r} is not a string, number or boolean")
        statements.append(f"{{%- set {name} = {json.dumps(value)} -%}}")
    return "".join(statements)


def with_template_defaults(model_dir: Path, view_dir: Path, arguments: Mapping[str, Any]) -> Path:
    """`view_dir`: links to `model_dir`'s files, its chat templates rendering with `arguments`.

    Raises ValueError when the folder has no chat template to change."""
    model_dir, view_dir = Path(model_dir).resolve(), Path(view_dir)
    view_dir.mkdir(parents=True, exist_ok=True)
    prefix, changed = template_prefix(arguments), []
    for entry in sorted(model_dir.iterdir()):
        target = view_dir / entry.name
        if entry.name in TEMPLATE_FILES and entry.is_file():
            text = _with_prefix(entry, prefix)
            if text is not None:
                atomic_write_text(target, text)
                changed.append(entry.name)
                continue
        if not target.exists():
            os.symlink(entry, target)
    if not changed:
        raise ValueError(f"{model_dir}: no chat template to render with {dict(arguments)}")
    return view_dir


def _with_prefix(file: Path, prefix: str) -> str | None:
    """The file's text with `prefix` before each chat template in it; None when it holds none."""
    if file.suffix == ".jinja":
        return prefix + file.read_text(encoding="utf-8")
    settings = json.loads(file.read_text(encoding="utf-8"))
    template = settings.get("chat_template")
    if isinstance(template, str):
        settings["chat_template"] = prefix + template
    elif isinstance(template, list):  # named templates: [{"name": ..., "template": ...}]
        settings["chat_template"] = [{**item, "template": prefix + item["template"]} for item in template]
    else:
        return None
    return json.dumps(settings, indent=2, ensure_ascii=False) + "\n"
