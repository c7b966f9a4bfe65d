"""The record of the Hub repos qlora-bot created (migration 0004) and for which adapter, and the one
owner of its SQL. Reached as `store.hub_repos`; the publisher asks it before writing into a repo."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

from storage.database import Database
from storage.models import HubRepo


def to_hub_repo(row: sqlite3.Row) -> HubRepo:
    return HubRepo(**dict(row))


class HubRepos:
    """Shares the Store's connection, lock and clock."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock

    async def record_created(self, repo_id: str, *, adapter: str, job_id: int | None) -> HubRepo:
        """The Hub just created `repo_id` for `adapter`. A row left from an earlier repo of that id
        (deleted on the Hub since) is replaced: the create succeeding proves the old repo is gone."""
        inserted = await self._db.run(
            "INSERT INTO hub_repos (repo_id, adapter, job_id, created_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (repo_id) DO UPDATE SET repo_id = excluded.repo_id, adapter = excluded.adapter,"
            " job_id = excluded.job_id, created_at = excluded.created_at RETURNING *",
            (repo_id, adapter, job_id, self._clock()),
        )
        return to_hub_repo(inserted[0])

    async def created(self, repo_id: str) -> HubRepo | None:
        """The record of `repo_id` (any letter case), or None when qlora-bot never created it."""
        found = await self._db.run("SELECT * FROM hub_repos WHERE repo_id = ?", (repo_id,))
        return to_hub_repo(found[0]) if found else None
