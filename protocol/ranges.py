"""The allowed range of a numeric setting, declared once and checked with the dotted key named.

Stdlib only: the job spec (protocol/job_spec.py) and the bot's config (bot/config.py) both declare theirs.
NaN and infinity are outside every range: `x <= 0` is False for NaN, so a bare comparison lets it through.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """low..high, either bound open (excluded) or absent; `None` values (unset optional keys) pass."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    @property
    def text(self) -> str:
        """The bounds as config.toml documents them: "> 0", ">= 1", "in [0, 1)"."""
        low, high = _number(self.low), _number(self.high)
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {low}" if self.low is not None else ""
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {high}"
        return f"in {'(' if self.low_open else '['}{low}, {high}{')' if self.high_open else ']'}"

    def problem(self, key: str, value: Any) -> str | None:
        """`"key: must be ... (got value)"` when `value` is out of range; None when it fits or is unset."""
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if self.contains(value):
            return None
        kind = "an integer" if isinstance(value, int) else "a finite number"
        return f"{key}: must be {f'{kind} {self.text}'.strip()} (got {value!r})"


def at_least(low: float, high: float | None = None) -> Range:
    """[low, high]"""
    return Range(low, high)


def above(low: float, high: float | None = None) -> Range:
    """(low, high]"""
    return Range(low, high, low_open=True)


def _number(value: float | None) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)
