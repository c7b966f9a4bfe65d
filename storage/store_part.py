"""What every part of the Store (storage/jobs.py, transitions.py, event_log.py, adapters.py) works
through: the one connection, the clock and the outbox, which Store.__init__ sets once for all of them."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TypeVar

from storage.database import Database
from storage.outbox import Outbox

Clock = Callable[[], float]
T = TypeVar("T")


class StorePart:
    """A share of the Store's methods; only Store itself is built (it inherits every part)."""

    _db: Database
    _clock: Clock
    outbox: Outbox


def first(convert: Callable[[sqlite3.Row], T], found: list[sqlite3.Row]) -> T | None:
    """The first row converted, or None when there is none."""
    return convert(found[0]) if found else None
