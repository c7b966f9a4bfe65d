"""The Store: the one repository of jobs, attempts, events and adapters the rest of the code talks to.

Callers get frozen dataclasses (storage.models), never rows. Its methods live in one module per subject,
which it inherits: creating and reading jobs (storage/jobs.py), their guarded transitions
(storage/transitions.py), the event log (storage/event_log.py) and the adapters (storage/adapters.py).
The transitions also write, in the same transaction, what the change owes Discord (storage/outbox.py,
reached as `store.outbox`). The Hub repos qlora-bot created live in storage/hub_repos.py, reached as
`store.hub_repos`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from storage import migrate
from storage.adapters import AdapterCatalog, AdapterNameTaken
from storage.database import Database
from storage.event_log import EventLog
from storage.hub_repos import HubRepos
from storage.jobs import JobRecords
from storage.outbox import Outbox
from storage.store_part import Clock
from storage.transitions import JobTransitions

__all__ = ["AdapterNameTaken", "Store"]


class Store(JobRecords, JobTransitions, EventLog, AdapterCatalog):
    """Build it with `await Store.open(path)` (or `async with await Store.open(path) as store`)."""

    def __init__(self, db: Database, clock: Clock = time.time) -> None:
        self._db = db
        self._clock = clock
        self.outbox = Outbox(db, clock)
        self.hub_repos = HubRepos(db, clock)  # the Hub repos qlora-bot created (storage/hub_repos.py)

    @classmethod
    async def open(
        cls,
        path: Path,
        clock: Clock = time.time,
        *,
        migrations: Iterable[migrate.Migration] | None = None,
        jobs_dir: Path | None = None,
    ) -> Store:
        """Open (creating it and its folder if needed) the database and apply pending migrations; with
        `jobs_dir`, new job ids continue above its numbered job folders (Database.open)."""
        return cls(await Database.open(path, clock=clock, migrations=migrations, jobs_dir=jobs_dir), clock)

    async def close(self) -> None:
        await self._db.close()

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def schema_version(self) -> int:
        return await self._db.schema_version()
