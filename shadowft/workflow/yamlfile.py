"""YAML files that must hold a mapping (experiment configs, family files), read so that every
error names the file and the line.

PyYAML's own message says what it expected but not in which file, and Snakemake's reading of
a config file drops even that ("Config file is not valid JSON or YAML"): a user with several
config files is left to guess. Here a syntax error gives ``file:line:column``, the offending
line, and what to do; an empty file or a top level that is a list or a single value says so.
"""

from __future__ import annotations

from pathlib import Path

import yaml


class YamlFileError(ValueError):
    """The file is not a YAML mapping; the message names the file and the line."""


class _DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping gives one key twice: YAML forbids it, and PyYAML would keep the last silently."""


class _UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        first_lines = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                continue
            key = self.construct_object(key_node)
            if key in first_lines:
                raise _DuplicateKeyError(
                    "while reading a mapping",
                    node.start_mark,
                    f"the key {key!r} appears twice (first on line {first_lines[key] + 1})",
                    key_node.start_mark,
                )
            first_lines[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


def load_mapping(path: Path, what: str) -> dict:
    """The mapping a YAML file holds; `what` names the file's role in messages ("config file")."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise YamlFileError(f"{path}: cannot read the {what}: {error}; check the path") from None
    loader = _UniqueKeyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise YamlFileError(
                f"{path}: the {what} is empty (nothing but blanks or comments); "
                "write its keys, one per line (`key: value`)"
            )
        if not isinstance(node, yaml.MappingNode):
            kind = "a list" if isinstance(node, yaml.SequenceNode) else f"the single value {node.value!r}"
            raise YamlFileError(
                f"{path}:{node.start_mark.line + 1}: the top level of the {what} is {kind}; "
                "it must map keys to values (`key: value`, one per line, not indented)"
            )
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        raise YamlFileError(_syntax_message(path, what, text, error)) from None
    finally:
        loader.dispose()


def _syntax_message(path: Path, what: str, text: str, error: yaml.MarkedYAMLError) -> str:
    lines = text.splitlines()
    mark = error.problem_mark or error.context_mark
    if mark.line >= len(lines) and error.context_mark is not None:
        mark = error.context_mark  # the file ended inside a construct: point at where it began
    line = lines[mark.line] if mark.line < len(lines) else ""
    indentation = line[: len(line) - len(line.lstrip())]
    if isinstance(error, _DuplicateKeyError):
        hint = "keep one of the two: the second would silently replace the first"
    elif "\t" in indentation:
        hint = "indent with spaces: YAML does not allow tabs"
    else:
        hint = "fix the YAML there (an unclosed bracket or quote, or a misaligned key, is often the cause)"
    problem = " ".join(part for part in (error.context, error.problem) if part)
    return (
        f"{path}:{mark.line + 1}:{mark.column + 1}: the {what} is not valid YAML: {problem}\n"
        f"  {mark.line + 1} | {line.expandtabs(4)}\n"
        f"  {hint}"
    )
