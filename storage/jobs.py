"""Creating and reading jobs and their attempts: the Store's queries on the jobs and attempts tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from protocol.job_spec import JobSpec
from storage.models import Attempt, Job
from storage.rows import job_filter, to_attempt, to_job
from storage.store_part import StorePart, first


class JobRecords(StorePart):
    """Part of the Store (storage/store.py): reached as `store.create_job(...)`, `store.get_job(...)`."""

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
        return first(to_job, await self._db.run("SELECT * FROM jobs WHERE id = ?", (job_id,)))

    async def job_in_folder(self, folder: str) -> Job | None:
        """The job whose folder is `folder`, e.g. the owner of a checkpoint."""
        return first(
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
        return first(to_job, await self._db.run("SELECT * FROM jobs WHERE idempotency_key = ?", (key,)))

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
