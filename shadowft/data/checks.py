"""What LLaMA-Factory's sharegpt and alpaca readers would drop or misread in a row, one message per problem.

A row it would drop (missing column, unknown role, a turn out of order, an odd turn count,
empty conversation, non-string content) is named by its file, row and key. Standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shadowft.data.rows import DatasetFormatError, Row

FORMATS = ("sharegpt", "alpaca")
# At most this many format errors are listed (each names its file, row and key).
MAX_ERRORS = 20


@dataclass(frozen=True)
class SharegptTags:
    """The keys and role names of one sharegpt turn style, as LLaMA-Factory's `tags` call them."""

    role_tag: str
    content_tag: str
    user_tag: str
    assistant_tag: str
    system_tag: str = "system"
    # LLaMA-Factory's defaults for tool use.
    observation_tag: str = "observation"
    function_tag: str = "function_call"

    def info(self) -> dict[str, str]:
        return {
            "role_tag": self.role_tag,
            "content_tag": self.content_tag,
            "user_tag": self.user_tag,
            "assistant_tag": self.assistant_tag,
            "system_tag": self.system_tag,
        }


# The two turn styles in use: ShareGPT's own (Infinity-Instruct, LLaMA-Factory's default tags)
# and OpenAI's, told apart by the key that names the speaker.
SHAREGPT_STYLES = {
    "from": SharegptTags("from", "value", "human", "gpt"),
    "role": SharegptTags("role", "content", "user", "assistant"),
}
SHAREGPT_MESSAGES = "conversations"


def _string_or_missing(row: Row, key: str, problems: list[str]) -> None:
    value = row.values.get(key)
    if value is not None and not isinstance(value, str):
        problems.append(f"{row.where()}: {key}: not a string ({type(value).__name__})")


def sharegpt_style(row: Row) -> SharegptTags | None:
    """The turn style of a row's first turn, or None when it cannot be told."""
    turns = row.values.get(SHAREGPT_MESSAGES)
    if isinstance(turns, list) and turns and isinstance(turns[0], dict):
        for key, tags in SHAREGPT_STYLES.items():
            if key in turns[0]:
                return tags
    return None


def check_sharegpt(row: Row, tags: SharegptTags) -> list[str]:
    """What LLaMA-Factory's sharegpt reader would reject in `row`, one message per problem."""
    problems: list[str] = []
    if SHAREGPT_MESSAGES not in row.values:
        present = ", ".join(sorted(row.values)) or "none"
        return [f"{row.where()}: no column {SHAREGPT_MESSAGES!r} (sharegpt needs it; columns: {present})"]
    turns = row.values[SHAREGPT_MESSAGES]
    key = SHAREGPT_MESSAGES
    if not isinstance(turns, list):
        return [f"{row.where()}: {key}: a list of turns expected, got {type(turns).__name__}"]
    if not turns:
        return [f"{row.where()}: {key}: empty conversation"]
    _string_or_missing(row, "system", problems)
    # LLaMA-Factory: an optional system turn first, then user (or observation) and assistant
    # (or function call) turns alternating, ending with the assistant: an even count.
    expected = ((tags.user_tag, tags.observation_tag), (tags.assistant_tag, tags.function_tag))
    position = 0
    for number, turn in enumerate(turns):
        where = f"{row.where()}: {key}[{number}]"
        if not isinstance(turn, dict):
            problems.append(f"{where}: a turn must be an object with {tags.role_tag!r} and {tags.content_tag!r}")
            continue
        for needed in (tags.role_tag, tags.content_tag):
            if needed not in turn:
                problems.append(f"{where}: no key {needed!r} (turns here use {tags.role_tag!r}/{tags.content_tag!r})")
        if tags.content_tag in turn and not isinstance(turn[tags.content_tag], str):
            problems.append(f"{where}.{tags.content_tag}: not a string ({type(turn[tags.content_tag]).__name__})")
        role = turn.get(tags.role_tag)
        if role is None:
            continue
        if number == 0 and role == tags.system_tag:
            continue
        allowed = expected[position % 2]
        if role not in allowed:
            known = {tags.user_tag, tags.assistant_tag, tags.system_tag, tags.observation_tag, tags.function_tag}
            if role not in known:
                problem = f"unknown role {role!r} (known: {', '.join(sorted(known))})"
            elif role == tags.system_tag:
                problem = f"role {role!r} is allowed only as the first turn"
            else:
                problem = f"role {role!r} out of turn: LLaMA-Factory expects {' or '.join(map(repr, allowed))} here"
            problems.append(f"{where}.{tags.role_tag}: {problem}")
        position += 1
    if not problems and position % 2:
        problems.append(
            f"{row.where()}: {key}: {position} turns after the system prompt; LLaMA-Factory needs "
            f"user/assistant pairs, ending with {tags.assistant_tag!r}"
        )
    return problems


def check_alpaca(row: Row) -> list[str]:
    """What LLaMA-Factory's alpaca reader would reject in `row`, one message per problem."""
    problems: list[str] = []
    for column in ("instruction", "output"):
        if column not in row.values:
            present = ", ".join(sorted(row.values)) or "none"
            problems.append(f"{row.where()}: no column {column!r} (alpaca needs it; columns: {present})")
    if problems:
        return problems
    instruction, output = row.values["instruction"], row.values["output"]
    if not isinstance(instruction, str):
        problems.append(f"{row.where()}: instruction: not a string ({type(instruction).__name__})")
    elif not instruction.strip() and not (row.values.get("input") or "").strip():
        problems.append(f"{row.where()}: instruction: empty (and no input): nothing to answer")
    if not isinstance(output, str):
        problems.append(f"{row.where()}: output: not a string ({type(output).__name__})")
    for column in ("input", "system"):
        _string_or_missing(row, column, problems)
    history = row.values.get("history")
    if history is not None:
        if not isinstance(history, list):
            problems.append(f"{row.where()}: history: a list of [instruction, response] pairs expected")
        else:
            for number, pair in enumerate(history):
                if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
                    problems.append(f"{row.where()}: history[{number}]: a pair of strings expected")
    return problems


class RowChecker:
    """Checks rows one by one, remembering the sharegpt turn style the first row set."""

    def __init__(self, format: str) -> None:
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        self.format = format
        self.tags: SharegptTags | None = None

    def problems(self, row: Row) -> list[str]:
        """What LLaMA-Factory would reject in `row` (an empty list when it reads it as meant)."""
        if not isinstance(row.values, dict):
            return [f"{row.where()}: a row must be an object, got {type(row.values).__name__}"]
        if self.format == "alpaca":
            return check_alpaca(row)
        style = sharegpt_style(row)
        if self.tags is None and style is not None:
            self.tags = style
        elif style is not None and style != self.tags:
            return [
                f"{row.where()}: {SHAREGPT_MESSAGES}[0]: turns use {style.role_tag!r}/{style.content_tag!r}, "
                f"earlier rows {self.tags.role_tag!r}/{self.tags.content_tag!r}; one dataset uses one style"
            ]
        return check_sharegpt(row, self.tags or SHAREGPT_STYLES["from"])

    def style(self) -> SharegptTags | None:
        """The sharegpt turn style of the rows checked (None for alpaca)."""
        return (self.tags or SHAREGPT_STYLES["from"]) if self.format == "sharegpt" else None


def check_rows(rows: Iterable[Row], format: str) -> SharegptTags | None:
    """Check every row; return the sharegpt turn style (None for alpaca). Raise listing the problems."""
    checker = RowChecker(format)
    problems: list[str] = []
    for row in rows:
        problems.extend(checker.problems(row))
        if len(problems) >= MAX_ERRORS:
            break
    if problems:
        shown = problems[:MAX_ERRORS]
        more = " (the first ones; fix these and rerun)" if len(problems) >= MAX_ERRORS else ""
        raise DatasetFormatError(
            f"{len(shown)} format error(s){more}; LLaMA-Factory would drop or misread these rows:\n  "
            + "\n  ".join(shown)
        )
    return checker.style()
