"""Versioned, typed JSON lines: the wire format both worker protocols (training and serving) use.

One object per line, `v` (the protocol version) and `type` first, then the dataclass's fields;
decoding refuses other versions, unknown types and unknown or mistyped fields.
"""

from __future__ import annotations

import json
from typing import Any

from protocol.codec import CodecError, from_dict, to_dict, without_non_finite


def encode_line(version: int, type_name: str, message: Any) -> str:
    """One line of JSON (no trailing newline); NaN and infinity become null."""
    body = {"v": version, "type": type_name}
    body.update(without_non_finite(to_dict(message)))
    return json.dumps(body, separators=(",", ":"), allow_nan=False)


def decode_line(
    line: str | bytes, *, version: int, types: dict[str, type], error: type[ValueError], noun: str
) -> Any:
    """Parse one line into the dataclass its `type` names; raise `error` saying what is wrong."""
    try:
        data = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError) as problem:
        raise error(f"not a JSON {noun} line: {problem}") from None
    if not isinstance(data, dict):
        raise error(f"each {noun} line must be a JSON object")
    found = data.pop("v", None)
    if found != version:
        raise error(f"unsupported protocol version {found!r} (expected {version})")
    name = data.pop("type", None)
    cls = types.get(name) if isinstance(name, str) else None
    if cls is None:
        raise error(f"unknown {noun} type {name!r}")
    try:
        return from_dict(cls, data)
    except CodecError as problem:
        raise error(f"invalid {name} {noun}: {problem}") from None
