"""The Store: the repository of jobs, attempts, events and adapters, and the one owner of their SQL.

Callers get frozen dataclasses (storage.models), never rows. The transitions also write, in the same
transaction, what the change owes Discord (storage/outbox.py, reached as `store.outbox`). The Hub repos
qlora-bot created live in storage/hub_repos.py, reached as `store.hub_repos`.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeVar

import aiosqlite

from protocol.events import EVENT_TYPES, PHASES, Event, decode_event, encode_event, event_type
from protocol.job_spec import JobSpec
from storage import migrate
from storage.database import Database
from storage.hub_repos import HubRepos
from storage.models import (
    ATTEMPT_OUTCOMES,
    HUB_STATES,
    QUEUED_EXITS,
    TERMINAL_STATES,
    Adapter,
    Attempt,
    HubState,
    Job,
    StoredEvent,
)
from storage.outbox import Outbox
from storage.rows import job_filter, marks, to_adapter, to_attempt, to_event, to_job

Clock = Callable[[], float]
T = TypeVar("T")


class AdapterNameTaken(ValueError):
    """An adapter with this name already exists; names are how people pick adapters in /ask."""

    def __init__(self, name: str) -> None:
        super().__init__(f"an adapter named {name!r} already exists; choose another name")
        self.name = name


class Store:
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

    # -----------------------------------------------------------------------------------------
    # Creating and reading jobs

    async def create_job(
        self,
        *,
        owner: str,
        name: str,
        spec: JobSpec,
        jobs_dir: Path,
        folder: Path | None = None,
        prepare_folder: Callable[[Path], None] | None = None,
        idempotency_key: str | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        push_requested: bool = False,
        hub_private: bool = True,
    ) -> tuple[Job, bool]:
        """Insert a queued job that runs in `folder`, by default jobs_dir/ID (named after its new id);
        return (job, True). When `idempotency_key` is already taken, return (that job, False).

        `prepare_folder(folder)` runs inside the write transaction, so no runner can start the job before
        its files are there (a moved upload); it must be quick and must not use the Store.
        """
        async with self._db.transaction() as db:
            if idempotency_key is not None:
                found = await db.execute_fetchall(
                    "SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)
                )
                if found:
                    return to_job(found[0]), False
            inserted = await db.execute_fetchall(
                "INSERT INTO jobs (owner, name, spec, state, created_at, guild_id, channel_id,"
                " idempotency_key, push_requested, hub_private)"
                " VALUES (?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    owner,
                    name,
                    spec.to_json(),
                    self._clock(),
                    guild_id,
                    channel_id,
                    idempotency_key,
                    push_requested,
                    hub_private,
                ),
            )
            job_id = int(inserted[0]["id"])
            where = folder or jobs_dir / str(job_id)
            if prepare_folder is not None:
                prepare_folder(where)
            updated = await db.execute_fetchall(
                "UPDATE jobs SET folder = ? WHERE id = ? RETURNING *", (str(where), job_id)
            )
            if channel_id is not None:  # a job from Discord owes its channel a status message
                await self.outbox.owe_status(db, job_id, channel_id, self._clock())
            return to_job(updated[0]), True

    async def get_job(self, job_id: int) -> Job | None:
        return _first(to_job, await self._db.run("SELECT * FROM jobs WHERE id = ?", (job_id,)))

    async def job_in_folder(self, folder: str) -> Job | None:
        """The job whose folder is `folder`, e.g. the owner of a checkpoint."""
        return _first(
            to_job,
            await self._db.run("SELECT * FROM jobs WHERE folder = ? ORDER BY id DESC LIMIT 1", (folder,)),
        )

    async def jobs_resuming_from(self, checkpoint: str) -> list[Job]:
        """Jobs submitted to continue from this checkpoint (spec.resume_from), oldest first."""
        found = await self._db.run(
            "SELECT * FROM jobs WHERE json_extract(spec, '$.resume_from') = ? ORDER BY id", (checkpoint,)
        )
        return [to_job(row) for row in found]

    async def job_by_idempotency_key(self, key: str) -> Job | None:
        return _first(to_job, await self._db.run("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)))

    async def list_jobs(
        self, *, owner: str | None = None, states: Sequence[str] | None = None, limit: int = 50
    ) -> list[Job]:
        """Newest first."""
        where, params = job_filter(owner=owner, states=states)
        found = await self._db.run(f"SELECT * FROM jobs {where} ORDER BY id DESC LIMIT ?", (*params, limit))
        return [to_job(row) for row in found]

    async def queued_jobs(self) -> list[Job]:
        """Oldest first: the queue is FIFO, and a re-queued job keeps its place."""
        found = await self._db.run("SELECT * FROM jobs WHERE state = 'queued' ORDER BY id")
        return [to_job(row) for row in found]

    async def running_jobs(self) -> list[Job]:
        found = await self._db.run("SELECT * FROM jobs WHERE state = 'running' ORDER BY id")
        return [to_job(row) for row in found]

    async def count_jobs(
        self, *, owner: str, states: Sequence[str] | None = None, since: float | None = None
    ) -> int:
        """Jobs of `owner` (in `states`, created at or after `since`), e.g. for quotas."""
        where, params = job_filter(owner=owner, states=states, since=since)
        found = await self._db.run(f"SELECT COUNT(*) FROM jobs {where}", params)
        return int(found[0][0])

    async def recent_runtimes(self, limit: int = 20) -> list[float]:
        """finished_at - started_at (of the last attempt) of the latest succeeded jobs, newest first."""
        found = await self._db.run(
            "SELECT finished_at - started_at FROM jobs"
            " WHERE state = 'succeeded' AND started_at IS NOT NULL AND finished_at IS NOT NULL"
            " ORDER BY finished_at DESC, id DESC LIMIT ?",
            (limit,),
        )
        return [float(row[0]) for row in found]

    async def last_start_times(self) -> dict[str, float]:
        """When each person's most recent job started: the scheduler serves the longest-waiting first."""
        found = await self._db.run(
            "SELECT owner, MAX(started_at) FROM jobs WHERE started_at IS NOT NULL GROUP BY owner"
        )
        return {row[0]: float(row[1]) for row in found}

    # -----------------------------------------------------------------------------------------
    # Guarded transitions: each is one UPDATE ... WHERE state = <expected>. They return the updated
    # Job, or None when the job was not in an expected state and nothing changed; they never raise
    # for a refused transition (only for an argument no caller should pass, like an unknown state).
    # The CHECK constraints in the schema only back these guards up.

    async def start_job(self, job_id: int, *, slot: str, resumed_from: str | None) -> Job | None:
        """queued -> running, opening the Attempt numbered job.attempt."""
        now = self._clock()
        async with self._db.transaction() as db:
            updated = await db.execute_fetchall(
                "UPDATE jobs SET state = 'running', phase = NULL, started_at = ?, finished_at = NULL"
                " WHERE id = ? AND state = 'queued' RETURNING *",
                (now, job_id),
            )
            if not updated:
                return None
            job = to_job(updated[0])
            await db.execute(
                "INSERT INTO attempts (job_id, number, started_at, slot, resumed_from)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, job.attempt, now, slot, resumed_from),
            )
            await self.outbox.status_changed(db, job_id, now)
            return job

    async def set_worker_pid(self, job_id: int, attempt: int, pid: int) -> None:
        await self._db.run(
            "UPDATE attempts SET pid = ? WHERE job_id = ? AND number = ?", (pid, job_id, attempt)
        )

    async def set_phase(self, job_id: int, phase: str) -> Job | None:
        """Only while running."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
        async with self._db.transaction() as db:
            updated = await db.execute_fetchall(
                "UPDATE jobs SET phase = ? WHERE id = ? AND state = 'running' RETURNING *", (phase, job_id)
            )
            if updated:
                await self.outbox.status_changed(db, job_id, self._clock())
        return _first(to_job, list(updated))

    async def record_checkpoint(self, job_id: int, path: str) -> Job | None:
        """Only while running: the newest checkpoint, where a re-queued attempt resumes."""
        return _first(
            to_job,
            await self._db.run(
                "UPDATE jobs SET checkpoint_path = ? WHERE id = ? AND state = 'running' RETURNING *",
                (path, job_id),
            ),
        )

    async def finish_job(
        self,
        job_id: int,
        state: Literal["succeeded", "failed", "cancelled"],
        *,
        error_kind: str | None = None,
        error_message: str | None = None,
        error_hint: str | None = None,
        adapter_path: str | None = None,
        attempt_outcome: str | None = None,
        attempt_detail: str | None = None,
    ) -> Job | None:
        """running -> any terminal state, or queued -> cancelled | failed (a job that never ran cannot
        succeed). Closes the current attempt with `attempt_outcome` (default: the state)."""
        if state not in TERMINAL_STATES:
            raise ValueError(f"finish_job needs a terminal state, got {state!r}")
        outcome = attempt_outcome or state
        sources = ("running", "queued") if state in QUEUED_EXITS else ("running",)
        now = self._clock()
        async with self._db.transaction() as db:
            updated = await db.execute_fetchall(
                "UPDATE jobs SET state = ?, phase = NULL, finished_at = ?, error_kind = ?,"
                " error_message = ?, error_hint = ?, adapter_path = ?"
                f" WHERE id = ? AND state IN ({marks(sources)}) RETURNING *",
                (state, now, error_kind, error_message, error_hint, adapter_path, job_id, *sources),
            )
            if not updated:
                return None
            job = to_job(updated[0])
            # A job finished from queued has no open attempt, so this then changes nothing.
            await _close_attempt(db, job_id, job.attempt, now, outcome, attempt_detail)
            await self.outbox.status_changed(db, job_id, now)
            if not job.publish_pending:  # else set_hub_state owes it, once the publish ended
                await self.outbox.owe_completion(db, job, now)
            return job

    async def requeue_job(
        self, job_id: int, *, resume_from: str | None, outcome: str, detail: str
    ) -> Job | None:
        """running -> queued for another attempt (attempt + 1) that resumes from `resume_from`; the
        current attempt is closed with `outcome` (e.g. "crashed", "stopped") and `detail`."""
        now = self._clock()
        async with self._db.transaction() as db:
            updated = await db.execute_fetchall(
                "UPDATE jobs SET state = 'queued', phase = NULL, attempt = attempt + 1, checkpoint_path = ?"
                " WHERE id = ? AND state = 'running' RETURNING *",
                (resume_from, job_id),
            )
            if not updated:
                return None
            job = to_job(updated[0])
            await _close_attempt(db, job_id, job.attempt - 1, now, outcome, detail)
            await self.outbox.status_changed(db, job_id, now)
            return job

    async def request_cancel(self, job_id: int, by: str) -> Job | None:
        """Mark a queued or running job for cancellation. The first request wins: a later one leaves
        `cancel_requested_by` as it was but still returns the job. None once the job is terminal."""
        return _first(
            to_job,
            await self._db.run(
                "UPDATE jobs SET cancel_requested_by = COALESCE(cancel_requested_by, ?)"
                " WHERE id = ? AND state IN ('queued', 'running') RETURNING *",
                (by, job_id),
            ),
        )

    async def set_hub_state(
        self,
        job_id: int,
        state: HubState,
        *,
        url: str | None = None,
        error: str | None = None,
        commit: str | None = None,
    ) -> Job | None:
        """Only for succeeded jobs; `url`, `error` and `commit` replace the stored ones."""
        if state not in HUB_STATES:
            raise ValueError(f"unknown hub state {state!r} (known: {', '.join(HUB_STATES)})")
        now = self._clock()
        async with self._db.transaction() as db:
            updated = await db.execute_fetchall(
                "UPDATE jobs SET hub_state = ?, hub_url = ?, hub_error = ?, hub_commit = ?"
                " WHERE id = ? AND state = 'succeeded' RETURNING *",
                (state, url, error, commit, job_id),
            )
            if not updated:
                return None
            job = to_job(updated[0])
            await self.outbox.status_changed(db, job_id, now)
            if not job.publish_pending:  # the first publish outcome ends the job's story: announce it
                await self.outbox.owe_completion(db, job, now)
            return job

    async def jobs_to_publish(self) -> list[Job]:
        """Succeeded jobs whose requested publish never ended (the process stopped during it)."""
        found = await self._db.run(
            "SELECT * FROM jobs WHERE state = 'succeeded' AND push_requested = 1 AND hub_state = 'none'"
            " ORDER BY id"
        )
        return [to_job(row) for row in found]

    async def attempts(self, job_id: int) -> list[Attempt]:
        found = await self._db.run("SELECT * FROM attempts WHERE job_id = ? ORDER BY number", (job_id,))
        return [to_attempt(row) for row in found]

    # -----------------------------------------------------------------------------------------
    # Events

    async def append_event(self, job_id: int, attempt: int, event: Event) -> StoredEvent:
        body = encode_event(event)
        now = self._clock()
        async with self._db.transaction() as db:
            inserted = await db.execute_fetchall(
                "INSERT INTO events (job_id, attempt, created_at, type, body)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (job_id, attempt, now, event_type(event), body),
            )
            if event_type(event) == "progress":  # the status message shows the newest step, loss and ETA
                await self.outbox.status_changed(db, job_id, now)
        # Decoded from what was stored (a NaN loss becomes None), so it equals what a later read returns.
        return StoredEvent(int(inserted[0]["id"]), job_id, attempt, now, decode_event(body))

    async def events(self, job_id: int, *, after_id: int = 0, limit: int | None = None) -> list[StoredEvent]:
        """The job's events with id > after_id, in the order they were stored."""
        found = await self._db.run(
            "SELECT * FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
            (job_id, after_id, -1 if limit is None else limit),  # LIMIT -1: no limit
        )
        return [to_event(row) for row in found]

    async def last_event(self, job_id: int, type_name: str) -> StoredEvent | None:
        """The job's newest event of this type (e.g. "progress")."""
        if type_name not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_name!r} (known: {', '.join(EVENT_TYPES)})")
        found = await self._db.run(
            "SELECT * FROM events WHERE job_id = ? AND type = ? ORDER BY id DESC LIMIT 1",
            (job_id, type_name),
        )
        return _first(to_event, found)

    # -----------------------------------------------------------------------------------------
    # Adapters

    async def add_adapter(self, *, name: str, job_id: int, base_model: str, path: str) -> Adapter:
        """Raises AdapterNameTaken when the name is in use (the UNIQUE constraint is the backstop)."""
        async with self._db.transaction() as db:
            if await db.execute_fetchall("SELECT 1 FROM adapters WHERE name = ?", (name,)):
                raise AdapterNameTaken(name)
            inserted = await db.execute_fetchall(
                "INSERT INTO adapters (name, job_id, base_model, path, created_at)"
                " VALUES (?, ?, ?, ?, ?) RETURNING *",
                (name, job_id, base_model, path, self._clock()),
            )
            return to_adapter(inserted[0])

    async def adapter(self, name: str) -> Adapter | None:
        return _first(to_adapter, await self._db.run("SELECT * FROM adapters WHERE name = ?", (name,)))

    async def adapters(self, *, limit: int = 50) -> list[Adapter]:
        """Newest first."""
        found = await self._db.run("SELECT * FROM adapters ORDER BY id DESC LIMIT ?", (limit,))
        return [to_adapter(row) for row in found]

    async def set_adapter_hub_repo(self, name: str, repo: str) -> None:
        await self._db.run("UPDATE adapters SET hub_repo = ? WHERE name = ?", (repo, name))


async def _close_attempt(
    db: aiosqlite.Connection, job_id: int, number: int, now: float, outcome: str, detail: str | None
) -> None:
    if outcome not in ATTEMPT_OUTCOMES:
        raise ValueError(f"unknown attempt outcome {outcome!r} (known: {', '.join(ATTEMPT_OUTCOMES)})")
    await db.execute(
        "UPDATE attempts SET finished_at = ?, outcome = ?, detail = ?"
        " WHERE job_id = ? AND number = ? AND finished_at IS NULL",
        (now, outcome, detail, job_id, number),
    )


def _first(convert: Callable[[sqlite3.Row], T], found: list[sqlite3.Row]) -> T | None:
    return convert(found[0]) if found else None
