"""A dataset's raw rows, and the caps every reader applies while it reads: rows, bytes once decoded, bytes
per row. Owns the messages about those caps, each naming the file (and line) and the setting to raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from protocol.errors import UserError
from protocol.job_spec import Limits

# Where an admin raises a cap: the bot's config.toml (the CLI reads the same file).
SETTINGS = "defaults.limits"


@dataclass(frozen=True)
class Records:
    """The raw rows of a dataset, with enough provenance to point a person at a bad one."""

    rows: list[dict[str, Any]]
    origin: str  # short human name: "data.jsonl", "https://x/y.csv", "Hub dataset org/name (split train)"
    line_numbers: tuple[int, ...] | None = None  # 1-based file line of each row (jsonl, csv, txt)

    def where(self, index: int) -> str:
        if self.line_numbers is not None:
            return f"{self.origin} line {self.line_numbers[index]}"
        return f"row {index + 1} of {self.origin}"


class RowCollector:
    """Keeps rows as a reader produces them and refuses the dataset at the first cap it passes.

    The caps are checked on each row before the next is read, so no reader ever holds more than one
    row beyond them. Past max_rows rows are only counted, so the message can say how many there are."""

    def __init__(self, origin: str, limits: Limits, *, numbered: bool) -> None:
        self.origin = origin
        self.limits = limits
        self.rows: list[dict[str, Any]] = []
        self.numbers: list[int] | None = [] if numbered else None
        self.decoded_bytes = 0
        self.count = 0

    def check_row_size(self, size: int, where: str) -> None:
        """Refuse a row of `size` bytes (decoded) before it is converted, and count it in the total."""
        if size > self.limits.max_row_bytes:
            raise row_too_large(where, size, self.limits)
        self.add_decoded(size)

    def add_decoded(self, size: int) -> None:
        self.decoded_bytes += size
        if self.decoded_bytes > self.limits.max_dataset_bytes:
            raise too_large_decoded(self.origin, self.limits)

    def add(self, row: dict[str, Any], line: int | None = None) -> None:
        self.count += 1
        if self.count > self.limits.max_rows:
            return  # counted, not kept: the dataset is refused once the reader reaches its end
        self.rows.append(row)
        if self.numbers is not None and line is not None:
            self.numbers.append(line)

    def records(self) -> Records:
        if self.count > self.limits.max_rows:
            raise too_many_rows(self.origin, self.count, self.limits)
        numbers = tuple(self.numbers) if self.numbers is not None else None
        return Records(self.rows, self.origin, numbers)


# ---------------------------------------------------------------------------------------------
# Messages


def too_large(origin: str, size: int | None, limits: Limits) -> UserError:
    size_text = f"is {human(size)}, above" if size is not None else "is larger than"
    return UserError(
        f"{origin} {size_text} the dataset size limit of {human(limits.max_dataset_bytes)}",
        "use a smaller dataset, or ask an admin to raise the limit",
    )


def too_large_decoded(origin: str, limits: Limits) -> UserError:
    return UserError(
        f"{origin} holds more than the dataset size limit of {human(limits.max_dataset_bytes)} "
        "once decompressed",
        f"use a smaller dataset, or ask an admin to raise the limit ({SETTINGS}.max_dataset_bytes)",
    )


def too_many_rows(origin: str, count: int, limits: Limits) -> UserError:
    return UserError(
        f"{origin} has {count:,} rows, above the limit of {limits.max_rows:,}",
        "use fewer rows, or ask an admin to raise the limit",
    )


def row_too_large(where: str, size: int | None, limits: Limits) -> UserError:
    size_text = f"is {human(size)}, above" if size is not None else "is larger than"
    return UserError(
        f"{where}: the row {size_text} the limit of {human(limits.max_row_bytes)} per row",
        "split or shorten it (a row longer than max_length tokens is not trained on anyway), "
        f"or ask an admin to raise {SETTINGS}.max_row_bytes",
    )


def not_an_object(where: str, value: object) -> UserError:
    hint = 'every row must be one JSON object with named fields, e.g. {"text": "..."}'
    return UserError(f"{where}: expected a JSON object, got {json_type(value)}", hint)


def human(size: int) -> str:
    value, unit = float(size), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


_JSON_TYPES = {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "a string"}


def json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), "a list" if isinstance(value, list) else "an object")
