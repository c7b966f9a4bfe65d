"""The outbox (migration 0003): what the bot owes Discord channels, and the one owner of its SQL.

The Store's transitions call the `owe_*` / `status_changed` methods with their own transaction's
connection, so a job change and the message it owes commit together. The deliverer (bot process) reads
due entries and records how each try went with the `mark_*` methods.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import sqlite3
from collections.abc import Callable

import aiosqlite

from storage.database import Database
from storage.models import EDITED_KINDS, OUTBOX_KINDS, Job, OutboxEntry

# Where a delivered create's message id is also kept on the job (older readers, /job, the CLI).
_JOB_COLUMN = {"status": "status_message_id", "completion": "completion_message_id"}


def to_entry(row: sqlite3.Row) -> OutboxEntry:
    return OutboxEntry(**dict(row))


class Outbox:
    """Reached as `store.outbox`; shares the Store's connection, lock and clock."""

    def __init__(self, db: Database, clock: Callable[[], float]) -> None:
        self._db = db
        self._clock = clock
        # Set when this process writes something due now: the deliverer wakes at once instead of at its
        # next poll (which is only for rows another process, e.g. the CLI, wrote).
        self._written = asyncio.Event()

    # -----------------------------------------------------------------------------------------
    # Owed by a job change: `db` is the connection of the caller's open transaction.

    async def owe_status(self, db: aiosqlite.Connection, job_id: int, channel_id: int, now: float) -> None:
        """A new job's status message, posted showing the job as it is when delivered."""
        await self._owe(db, job_id, "status", channel_id, now)

    async def owe_completion(self, db: aiosqlite.Connection, job: Job, now: float) -> None:
        """The message that mentions the owner once the job ended (and its publish step, if any, did):
        owed at most once per job, so a second call (a later /push) changes nothing."""
        if job.channel_id is not None:
            await self._owe(db, job.id, "completion", job.channel_id, now)

    async def status_changed(self, db: aiosqlite.Connection, job_id: int, now: float) -> None:
        """The job's status message must show its newest state: one more revision, never one more row,
        so a burst of progress events becomes one edit. A failed status message stays given up."""
        bumped = await db.execute_fetchall(
            "UPDATE outbox SET revision = revision + 1, state = 'pending',"
            " next_attempt_at = CASE WHEN state = 'delivered' THEN ? ELSE next_attempt_at END"
            " WHERE job_id = ? AND kind = 'status' AND state != 'failed'"
            " RETURNING revision - delivered_revision AS behind",
            (now, job_id),
        )
        # behind == 1: it was up to date, so it is due now. An entry already pending (waiting for the
        # edit budget or a backoff) is woken by its own deadline and renders the newest state anyway.
        if any(row["behind"] == 1 for row in bumped):
            self.wake()

    async def _owe(
        self, db: aiosqlite.Connection, job_id: int, kind: str, channel_id: int, now: float
    ) -> None:
        if kind not in OUTBOX_KINDS:
            raise ValueError(f"unknown outbox kind {kind!r} (known: {', '.join(OUTBOX_KINDS)})")
        await db.execute(
            "INSERT INTO outbox (job_id, kind, channel_id, nonce, created_at, next_attempt_at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",  # the one-per-job index
            (job_id, kind, channel_id, secrets.token_hex(8), now, now),
        )
        self.wake()

    # -----------------------------------------------------------------------------------------
    # The deliverer

    def wake(self) -> None:
        self._written.set()

    async def wait(self, timeout: float) -> None:
        """Until something is written (or wake() is called), at most `timeout` seconds."""
        # asyncio.timeout, not wait_for: on 3.11 wait_for can turn a cancel that lands as its timeout
        # expires into a TimeoutError, and a cancelled deliverer would then never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._written.wait()
        self._written.clear()

    async def due(self, now: float, limit: int = 500) -> list[OutboxEntry]:
        """Pending entries whose try is due, oldest first. A job's later message waits while an earlier
        one of the same job is not posted yet: its status message comes before its completion."""
        found = await self._db.run(
            "SELECT * FROM outbox AS o WHERE state = 'pending' AND next_attempt_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM outbox AS e WHERE e.job_id = o.job_id AND e.id < o.id"
            " AND e.state = 'pending' AND e.message_id IS NULL)"
            " ORDER BY id LIMIT ?",
            (now, limit),
        )
        return [to_entry(row) for row in found]

    async def next_due_at(self, now: float) -> float | None:
        """When the earliest pending entry that is not due yet (backing off) becomes due."""
        found = await self._db.run(
            "SELECT MIN(next_attempt_at) FROM outbox WHERE state = 'pending' AND next_attempt_at > ?", (now,)
        )
        return None if found[0][0] is None else float(found[0][0])

    async def entries(self, job_id: int) -> list[OutboxEntry]:
        """Everything the job owes or owed, oldest first (e.g. for /job to show what could not be sent)."""
        found = await self._db.run("SELECT * FROM outbox WHERE job_id = ? ORDER BY id", (job_id,))
        return [to_entry(row) for row in found]

    async def entry(self, entry_id: int) -> OutboxEntry | None:
        found = await self._db.run("SELECT * FROM outbox WHERE id = ?", (entry_id,))
        return to_entry(found[0]) if found else None

    async def mark_sending(self, entry: OutboxEntry) -> None:
        """Before a create is handed to Discord: from now on the message may exist there even if we never
        hear back (a crash, a lost response), so a later try must look for it before posting again.
        Committed before the request is sent."""
        await self._db.run(
            "UPDATE outbox SET first_sent_at = COALESCE(first_sent_at, ?) WHERE id = ?",
            (self._clock(), entry.id),
        )

    async def mark_posted(
        self, entry: OutboxEntry, message_id: int, *, revision: int, content_hash: str | None
    ) -> OutboxEntry | None:
        """The create landed as `message_id` showing `revision`; the job keeps the id too. An edited kind
        stays pending if it changed meanwhile."""
        now = self._clock()
        async with self._db.transaction() as db:
            updated = await db.execute_fetchall(
                "UPDATE outbox SET message_id = ?, tries = 0, error = NULL, error_code = NULL,"
                " delivered_revision = MAX(delivered_revision, ?), delivered_hash = ?, delivered_at = ?,"
                " state = CASE WHEN revision <= ? THEN 'delivered' ELSE 'pending' END, next_attempt_at = ?"
                " WHERE id = ? AND state = 'pending' RETURNING *",
                (message_id, revision, content_hash, now, revision, now, entry.id),
            )
            column = _JOB_COLUMN.get(entry.kind)
            if updated and column is not None:
                await db.execute(f"UPDATE jobs SET {column} = ? WHERE id = ?", (message_id, entry.job_id))
        return to_entry(updated[0]) if updated else None

    async def mark_edited(
        self, entry: OutboxEntry, *, revision: int, content_hash: str
    ) -> OutboxEntry | None:
        """The message now shows `revision` (edited, or found to show that content already); still
        pending if a newer revision came meanwhile."""
        if entry.kind not in EDITED_KINDS:
            raise ValueError(f"{entry.kind} messages are posted once, never edited")
        now = self._clock()
        updated = await self._db.run(
            "UPDATE outbox SET tries = 0, error = NULL, delivered_revision = MAX(delivered_revision, ?),"
            " delivered_hash = ?, delivered_at = ?,"
            " state = CASE WHEN revision <= ? THEN 'delivered' ELSE 'pending' END, next_attempt_at = ?"
            " WHERE id = ? AND state = 'pending' RETURNING *",
            (revision, content_hash, now, revision, now, entry.id),
        )
        return to_entry(updated[0]) if updated else None

    async def mark_retry(self, entry: OutboxEntry, *, at: float, error: str) -> None:
        """A try failed for a reason that may pass (5xx, 429, no network): try again at `at`."""
        await self._db.run(
            "UPDATE outbox SET tries = tries + 1, next_attempt_at = ?, error = ?"
            " WHERE id = ? AND state = 'pending'",
            (at, error, entry.id),
        )

    async def mark_failed(self, entry: OutboxEntry, *, error: str, code: int | None) -> None:
        """Given up for good (unknown channel, missing permissions, deleted message): kept for /job."""
        await self._db.run(
            "UPDATE outbox SET state = 'failed', tries = tries + 1, error = ?, error_code = ?"
            " WHERE id = ? AND state = 'pending'",
            (error, code, entry.id),
        )
