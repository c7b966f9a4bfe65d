"""Recognising a dataset's format from its columns, and turning its rows into validated, typed examples.

Owns the mapping of ShareGPT and Alpaca rows onto chat turns (trl itself reads only messages,
prompt/completion and text), and what a trainable chat and a trainable text are.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from protocol.errors import UserError
from trainer.data.records import Records

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = ("system", "user", "assistant")
SHAREGPT_ROLES: dict[str, Role] = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "user": "user",
    "assistant": "assistant",
}


@dataclass(frozen=True)
class TextExample:
    text: str


@dataclass(frozen=True)
class ChatExample:
    messages: tuple[tuple[Role, str], ...]  # (role, content); ends with an assistant turn


@dataclass(frozen=True)
class CompletionExample:
    prompt: str
    completion: str


Example = TextExample | ChatExample | CompletionExample

# Required columns of each format, in detection priority: a row with both `messages` and `text`
# is a chat. Optional columns only appear in messages.
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "messages": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt-completion": ("prompt", "completion"),
    "text": ("text",),
}
OPTIONAL_COLUMNS: dict[str, tuple[str, ...]] = {"alpaca": ("input", "system")}
_HINTS = {
    "messages": "each row needs `messages`: a list of {role, content} with roles system, user or "
    "assistant, ending with a non-empty assistant reply",
    "sharegpt": "each row needs `conversations`: a list of {from, value} with from human, gpt or system, "
    "ending with a non-empty gpt reply",
    "alpaca": "each row needs a non-empty `instruction` and `output` (strings); `input` and `system` "
    "are optional strings",
    "prompt-completion": "each row needs `prompt` and a non-empty `completion`, both strings or both "
    "lists of {role, content} messages",
    "text": "each row needs a non-empty `text` string",
}
_ORDER_HINT = (
    "a conversation is an optional system message, then user and assistant turns taking turns, starting "
    "with user and ending with assistant: merge two turns in a row of one role into one"
)
# Neither is text a tokenizer can take: a NUL is usually a binary or UTF-16 file read as text, and a lone
# surrogate (only JSON's \u escapes can make one) cannot even be encoded as UTF-8.
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")


class _BadRow(Exception):
    """One row's problem, without the row's location (the caller adds it); the hint defaults to the
    format's."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def detect_format(records: Records) -> str:
    """The first format, in FORMAT_COLUMNS order, whose required columns the first row has."""
    columns = records.rows[0].keys() if records.rows else ()
    for fmt, required in FORMAT_COLUMNS.items():
        if all(column in columns for column in required):
            return fmt
    accepted = "; ".join(f"{fmt}: {_describe(fmt)}" for fmt in FORMAT_COLUMNS)
    raise UserError(
        f"{records.origin}: cannot tell the dataset format from its columns ({_names(columns)}); "
        f"accepted formats and their columns are {accepted}",
        "rename the columns to match one of these formats, or name the format explicitly (--format)",
    )


def to_examples(records: Records, fmt: str) -> tuple[str, list[Example]]:
    """Validate every row and convert it; returns the resolved format and one example per row."""
    if not records.rows:
        raise UserError(f"{records.origin} has no rows", "add at least one example to the dataset")
    if fmt == "auto":
        fmt = detect_format(records)
    elif fmt not in FORMAT_COLUMNS:
        raise UserError(f"unknown dataset format {fmt!r}", f"use auto or one of {', '.join(FORMAT_COLUMNS)}")
    else:
        columns = records.rows[0].keys()
        missing = [column for column in FORMAT_COLUMNS[fmt] if column not in columns]
        if missing:
            raise UserError(
                f"{records.origin}: format {fmt} needs column(s) {', '.join(missing)}, "
                f"but the columns are {_names(columns)}",
                f"rename the columns ({fmt} uses {_describe(fmt)}), or choose another format",
            )
    convert = _CONVERTERS.get(fmt)
    if convert is None:
        # Conversational and plain prompt/completion rows tokenize differently: the first row decides.
        first = records.rows[0]
        conversational = isinstance(first.get("prompt"), list) or isinstance(first.get("completion"), list)
        convert = functools.partial(_prompt_completion, conversational=conversational)
    examples: list[Example] = []
    problems: list[tuple[str, str]] = []
    # Check every row before failing, so the person learns how much of the file needs fixing.
    for index, row in enumerate(records.rows):
        try:
            examples.append(convert(row))
        except _BadRow as problem:
            problems.append((f"{records.where(index)}: {problem}", problem.hint))
    if problems:
        more = len(problems) - 1
        suffix = f" (and {more} more bad row{'s' if more > 1 else ''})" if more else ""
        first, hint = problems[0]
        raise UserError(first + suffix, hint or _HINTS[fmt])
    return fmt, examples


# ---------------------------------------------------------------------------------------------
# One converter per format: a row in, an example out, or _BadRow naming the field.


def _text(row: dict[str, Any]) -> Example:
    return TextExample(_nonblank(row, "text"))


def _messages(row: dict[str, Any]) -> Example:
    turns = _turns(_column(row, "messages"), "messages", "role", "content", ROLES)
    return ChatExample(_in_order(_chat(turns, "messages"), _paths("messages", turns)))


def _sharegpt(row: dict[str, Any]) -> Example:
    turns = _turns(_column(row, "conversations"), "conversations", "from", "value", SHAREGPT_ROLES)
    chat = _chat(turns, "conversations", "value")
    return ChatExample(_in_order(chat, _paths("conversations", turns), "value"))


def _alpaca(row: dict[str, Any]) -> Example:
    instruction = _nonblank(row, "instruction")
    extra = _optional_string(row, "input")
    system = _optional_string(row, "system")
    output = _nonblank(row, "output")
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    turns: list[tuple[Role, str]] = [("system", system)] if system.strip() else []
    return ChatExample((*turns, ("user", user), ("assistant", output)))


def _prompt_completion(row: dict[str, Any], conversational: bool) -> Example:
    prompt, completion = _column(row, "prompt"), _column(row, "completion")
    if not conversational:
        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise _BadRow(
                "prompt and completion must both be strings in every row, as in the first "
                f"(got {_type(prompt)} and {_type(completion)})"
            )
        if not completion.strip():
            raise _BadRow("completion is empty")
        return CompletionExample(_text_only(prompt, "prompt"), _text_only(completion, "completion"))
    if not isinstance(prompt, list) or not isinstance(completion, list):
        raise _BadRow(
            "prompt and completion must both be lists of messages in every row, as in the first "
            f"(got {_type(prompt)} and {_type(completion)})"
        )
    prompt_turns = _turns(prompt, "prompt", "role", "content", ROLES, allow_empty=True)
    completion_turns = _chat(_turns(completion, "completion", "role", "content", ROLES), "completion")
    paths = _paths("prompt", prompt_turns) + _paths("completion", completion_turns)
    return ChatExample(_in_order(prompt_turns + completion_turns, paths))


_CONVERTERS: dict[str, Callable[[dict[str, Any]], Example]] = {
    "messages": _messages,
    "sharegpt": _sharegpt,
    "alpaca": _alpaca,
    "text": _text,
}


# ---------------------------------------------------------------------------------------------
# Field checks


def _turns(
    value: Any,
    field: str,
    role_key: str,
    content_key: str,
    roles: tuple[str, ...] | dict[str, Role],
    allow_empty: bool = False,
) -> tuple[tuple[Role, str], ...]:
    """Parse a list of message objects; `roles` maps the dataset's role names onto ours."""
    if not isinstance(value, list):
        raise _BadRow(f"{field} must be a list of messages (got {_type(value)})")
    if not value and not allow_empty:
        raise _BadRow(f"{field} is an empty list")
    turns: list[tuple[Role, str]] = []
    for index, message in enumerate(value):
        path = f"{field}[{index}]"
        if not isinstance(message, dict):
            raise _BadRow(
                f"{path} must be an object with {role_key} and {content_key} (got {_type(message)})"
            )
        role = message.get(role_key)
        if not isinstance(role, str) or role not in roles:
            raise _BadRow(f"{path}.{role_key} must be one of {', '.join(roles)} (got {role!r})")
        content = message.get(content_key)
        if not isinstance(content, str):
            raise _BadRow(f"{path}.{content_key} must be a string (got {_type(content)})")
        _text_only(content, f"{path}.{content_key}")
        # Extra keys (name, tool_calls, weight...) are ignored: the chat template sees role and content.
        turns.append((roles[role] if isinstance(roles, dict) else role, content))
    return tuple(turns)


def _chat(
    turns: tuple[tuple[Role, str], ...], field: str, content_key: str = "content"
) -> tuple[tuple[Role, str], ...]:
    """A trainable chat: every assistant reply has text, and the last turn is one."""
    for index, (role, content) in enumerate(turns):
        if role == "assistant" and not content.strip():
            raise _BadRow(f"{field}[{index}].{content_key} is an empty assistant reply")
    if not any(role == "assistant" for role, _ in turns):
        raise _BadRow(f"{field} has no assistant turn to learn from")
    if turns[-1][0] != "assistant":
        # Trailing user turns would train on nothing and usually mean a truncated conversation.
        raise _BadRow(f"{field} must end with an assistant turn (the last is {turns[-1][0]})")
    return turns


def _in_order(
    turns: tuple[tuple[Role, str], ...], paths: list[str], content_key: str = "content"
) -> tuple[tuple[Role, str], ...]:
    """The chat if its roles follow the one order every chat template renders and each user turn says
    something; empty system messages are dropped (ShareGPT exports often carry one, and a template would
    render an empty header for it)."""
    previous: tuple[str, str] | None = None  # (role, path) of the last user or assistant turn
    for index, ((role, content), path) in enumerate(zip(turns, paths, strict=True)):
        if role == "user" and not content.strip():
            raise _BadRow(f"{path}.{content_key} is an empty user turn")
        if role == "system":
            if index > 0:
                raise _BadRow(
                    f"{path} is a system message after the first turn; a system message may only come first",
                    _ORDER_HINT,
                )
            continue
        if previous is None and role != "user":
            raise _BadRow(
                f"{path} is an assistant turn before any user turn; a conversation starts with a user "
                "turn (after an optional system message)",
                _ORDER_HINT,
            )
        if previous is not None and previous[0] == role:
            raise _BadRow(f"{path} is a second {role} turn in a row (after {previous[1]})", _ORDER_HINT)
        previous = (role, path)
    return tuple(turn for turn in turns if turn[0] != "system" or turn[1].strip())


def _paths(field: str, turns: tuple[tuple[Role, str], ...]) -> list[str]:
    return [f"{field}[{index}]" for index in range(len(turns))]


def _text_only(value: str, path: str) -> str:
    """`value`, after refusing characters that are not text (a NUL, a lone UTF-16 surrogate)."""
    found = _NOT_TEXT.search(value)
    if found is None:
        return value
    char, at = found.group(), found.start() + 1
    if char == "\x00":
        raise _BadRow(
            f"{path} holds a NUL character (\\u0000) at character {at}",
            "remove the NUL characters; a file full of them is often UTF-16 or binary: save it as UTF-8 text",
        )
    raise _BadRow(
        f"{path} holds a lone surrogate \\u{ord(char):04x} at character {at} (half of a UTF-16 pair: "
        "not valid Unicode)",
        "write characters as themselves in UTF-8, or escape both halves of the pair (e.g. \\ud83d\\ude00)",
    )


def _column(row: dict[str, Any], name: str) -> Any:
    if name not in row:
        raise _BadRow(f"missing column {name!r} (columns: {_names(row.keys())})")
    return row[name]


def _nonblank(row: dict[str, Any], name: str) -> str:
    value = _column(row, name)
    if not isinstance(value, str):
        raise _BadRow(f"{name} must be a string (got {_type(value)})")
    if not value.strip():
        raise _BadRow(f"{name} is empty")
    return _text_only(value, name)


def _optional_string(row: dict[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise _BadRow(f"{name} must be a string (got {_type(value)})")
    return _text_only(value, name)


def _describe(fmt: str) -> str:
    optional = OPTIONAL_COLUMNS.get(fmt)
    columns = ", ".join(FORMAT_COLUMNS[fmt])
    return f"{columns} (optional: {', '.join(optional)})" if optional else columns


def _names(columns: Any) -> str:
    return ", ".join(map(str, columns)) or "none"


def _type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {int: "number", float: "number", str: "string", list: "list", dict: "object"}.get(
        type(value), type(value).__name__
    )
