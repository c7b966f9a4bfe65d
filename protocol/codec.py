"""Strict conversion between plain dicts (JSON, TOML) and frozen dataclass trees, stdlib only.

Both the trainer protocol and the config loader need the same rules: unknown keys and wrong types
are refused with the dotted path of the offending key, so a typo never silently becomes a default.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class CodecError(ValueError):
    """A dict does not fit its dataclass; `path` is the dotted key at fault."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def to_dict(instance: Any) -> dict[str, Any]:
    """A JSON-ready dict of a dataclass tree (tuples become lists)."""
    return _plain(dataclasses.asdict(instance))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value


def without_non_finite(value: Any) -> Any:
    """NaN and infinity are not JSON: they travel as null (a diverged loss must not break a stream)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: without_non_finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [without_non_finite(item) for item in value]
    return value


def from_dict(cls: type[T], data: Any, path: str = "") -> T:
    """Build `cls` from `data`, refusing unknown keys, missing required keys and wrong types."""
    if not isinstance(data, dict):
        raise CodecError(path, f"expected a table/object, got {_type_name(data)}")
    hints = typing.get_type_hints(cls)
    fields = {field.name: field for field in dataclasses.fields(cls) if field.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise CodecError(_join(path, unknown[0]), f"unknown key (known keys here: {known})")
    values = {}
    for name, field in fields.items():
        key_path = _join(path, name)
        if name not in data:
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                raise CodecError(key_path, "required key is missing")
            continue
        values[name] = _convert(hints[name], data[name], key_path)
    return cls(**values)


def _convert(annotation: Any, value: Any, path: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (arg for arg in args if arg is not type(None)):
            try:
                return _convert(option, value, path)
            except CodecError as error:
                errors.append(error.problem)
        raise CodecError(path, errors[0] if len(errors) == 1 else f"expected {_describe(annotation)}")
    if origin is typing.Literal:
        if value not in args:
            raise CodecError(path, f"must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise CodecError(path, f"expected a list, got {_type_name(value)}")
        item_type = args[0] if args else Any
        items = [_convert(item_type, item, f"{path}[{index}]") for index, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise CodecError(path, f"expected a table/object, got {_type_name(value)}")
        return dict(value)
    if annotation is float:
        # An integer is a valid float in TOML and JSON (`lr = 1` means 1.0); a bool is not.
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise CodecError(path, f"expected a number, got {_type_name(value)}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise CodecError(path, f"expected an integer, got {_type_name(value)}")
    if annotation in (str, bool):
        if isinstance(value, annotation):
            return value
        raise CodecError(path, f"expected {_describe(annotation)}, got {_type_name(value)}")
    raise TypeError(f"{path}: unsupported annotation {annotation!r}")


def _describe(annotation: Any) -> str:
    names = {str: "a string", bool: "true or false", int: "an integer", float: "a number"}
    if annotation in names:
        return names[annotation]
    args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    return " or ".join(_describe(arg) for arg in args) if args else str(annotation)


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a table", type(None): "null"})
    return names.get(type(value), type(value).__name__)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
