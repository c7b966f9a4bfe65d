"""Parsing a dataset's JSON with the checks json.loads leaves out: nesting depth, integers too long for
Python, and a file line for every failure (json.loads reports the last two without a position).
"""

from __future__ import annotations

import json
import re
from typing import Any

from protocol.errors import UserError

# A row is an object of columns; chats go two levels further (a list of {role, content}). Deeper values
# are never training data, and refusing them keeps every later walk (hashing, conversion) shallow.
MAX_DEPTH = 32
_DEPTH_HINT = (
    'a row is one object of columns, e.g. {"messages": [{"role": ..., "content": ...}]}; '
    "flatten or drop the deeply nested values"
)
_BRACKETS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_LONG_INTEGER = re.compile(r"\d{4301}")  # past sys.get_int_max_str_digits(), json.loads raises ValueError


def parse_line(line: str, where: str) -> Any:
    """One JSON value from one line of a .jsonl file; `where` is "data.jsonl line 7"."""
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{where}: not valid JSON ({error.msg} at column {error.colno})",
            "each non-blank line of a .jsonl file must be one complete JSON object "
            "(a file holding one JSON list should be named .json)",
        ) from None
    except RecursionError:
        raise _too_deep(where) from None
    except ValueError as error:  # an integer of more than 4,300 digits
        raise _long_integer(where, error) from None
    check_depth(value, where)
    return value


def parse_document(text: str, origin: str) -> Any:
    """The one JSON value of a .json file, with the line of any failure."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{origin} line {error.lineno} column {error.colno}: not valid JSON ({error.msg})",
            "fix the JSON syntax there (a missing comma, quote or bracket is the usual cause)",
        ) from None
    except RecursionError:
        raise _too_deep(f"{origin} line {_deep_line(text)}") from None
    except ValueError as error:
        found = _LONG_INTEGER.search(text)
        where = f"{origin} line {text.count(chr(10), 0, found.start()) + 1}" if found else origin
        raise _long_integer(where, error) from None


def measure(value: Any) -> tuple[int, int]:
    """About how many bytes `value` holds (its strings, 8 per other scalar) and how deep it nests.

    Iterative, so a value nested as deep as json.loads allows cannot exhaust the Python stack here."""
    size, deepest = 0, 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, dict):
            deepest = max(deepest, depth)
            size += sum(len(key) for key in item)
            pending.extend((child, depth + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in item)
        else:
            size += 8
    return size, deepest


def check_depth(value: Any, where: str) -> int:
    """The value's size (see measure), after refusing one nested deeper than MAX_DEPTH."""
    size, depth = measure(value)
    if depth > MAX_DEPTH:
        raise _too_deep(where, depth)
    return size


def _too_deep(where: str, depth: int | None = None) -> UserError:
    levels = f"{depth} levels deep" if depth is not None else "deeper than Python can parse"
    return UserError(f"{where}: JSON nested {levels}; a row may nest at most {MAX_DEPTH} levels", _DEPTH_HINT)


def _long_integer(where: str, error: ValueError) -> UserError:
    digits = re.search(r"value has (\d+) digits", str(error))
    size = f"{int(digits.group(1)):,} digits" if digits else "too many digits"
    return UserError(
        f"{where}: a number with {size} (more than 4,300, the most a number may have)",
        "write such a value as a string (in quotes), or remove it",
    )


def _deep_line(text: str) -> int:
    """The line where the brackets first nest deeper than MAX_DEPTH (strings skipped)."""
    depth = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return text.count("\n", 0, match.start()) + 1
        elif token in "]}":
            depth -= 1
    return 1
