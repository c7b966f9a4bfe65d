"""A job's guarded state transitions (queued -> running -> terminal, requeue, cancel, publish outcome) and
the attempts they open and close, each written together with what it owes Discord (storage/outbox.py).

Each is one UPDATE ... WHERE state = <expected>. They return the updated Job, or None when the job was
not in an expected state and nothing changed; they never raise for a refused transition (only for an
argument no caller should pass, like an unknown state). The CHECK constraints in the schema only back
these guards up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

import aiosqlite

from protocol.events import PHASES
from storage.models import ATTEMPT_OUTCOMES, HUB_STATES, QUEUED_EXITS, TERMINAL_STATES, HubState, Job
from storage.rows import marks, to_job
from storage.store_part import StorePart, first

# What a transition writes beside the job's row, in the same transaction: (connection, updated job).
Also = Callable[[aiosqlite.Connection, Job], Awaitable[None]]


class JobTransitions(StorePart):
    """Part of the Store (storage/store.py): reached as `store.start_job(...)`, `store.finish_job(...)`."""

    async def start_job(self, job_id: int, *, slot: str, resumed_from: str | None) -> Job | None:
        """queued -> running, opening the Attempt numbered job.attempt."""
        now = self._clock()

        async def open_attempt(db: aiosqlite.Connection, job: Job) -> None:
            await db.execute(
                "INSERT INTO attempts (job_id, number, started_at, slot, resumed_from)"
                " VALUES (?, ?, ?, ?, ?)",
                (job_id, job.attempt, now, slot, resumed_from),
            )

        return await self._transition(
            "UPDATE jobs SET state = 'running', phase = NULL, started_at = ?, finished_at = NULL"
            " WHERE id = ? AND state = 'queued' RETURNING *",
            (now, job_id),
            now=now,
            also=open_attempt,
        )

    async def set_worker_pid(self, job_id: int, attempt: int, pid: int) -> None:
        await self._db.run(
            "UPDATE attempts SET pid = ? WHERE job_id = ? AND number = ?", (pid, job_id, attempt)
        )

    async def set_phase(self, job_id: int, phase: str) -> Job | None:
        """Only while running."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r} (known: {', '.join(PHASES)})")
        return await self._transition(
            "UPDATE jobs SET phase = ? WHERE id = ? AND state = 'running' RETURNING *",
            (phase, job_id),
        )

    async def record_checkpoint(self, job_id: int, path: str) -> Job | None:
        """Only while running: the newest checkpoint, where a re-queued attempt resumes."""
        return first(
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

        async def close_attempt(db: aiosqlite.Connection, job: Job) -> None:
            # A job finished from queued has no open attempt, so this then changes nothing.
            await _close_attempt(db, job_id, job.attempt, now, outcome, attempt_detail)

        return await self._transition(
            "UPDATE jobs SET state = ?, phase = NULL, finished_at = ?, error_kind = ?,"
            " error_message = ?, error_hint = ?, adapter_path = ?"
            f" WHERE id = ? AND state IN ({marks(sources)}) RETURNING *",
            (state, now, error_kind, error_message, error_hint, adapter_path, job_id, *sources),
            now=now,
            also=close_attempt,
            announce=True,  # unless its publish is pending: then set_hub_state owes it, once that ended
        )

    async def requeue_job(
        self, job_id: int, *, resume_from: str | None, outcome: str, detail: str
    ) -> Job | None:
        """running -> queued for another attempt (attempt + 1) that resumes from `resume_from`; the
        current attempt is closed with `outcome` (e.g. "crashed", "stopped") and `detail`."""
        now = self._clock()

        async def close_attempt(db: aiosqlite.Connection, job: Job) -> None:
            await _close_attempt(db, job_id, job.attempt - 1, now, outcome, detail)

        return await self._transition(
            "UPDATE jobs SET state = 'queued', phase = NULL, attempt = attempt + 1, checkpoint_path = ?"
            " WHERE id = ? AND state = 'running' RETURNING *",
            (resume_from, job_id),
            now=now,
            also=close_attempt,
        )

    async def request_cancel(self, job_id: int, by: str) -> Job | None:
        """Mark a queued or running job for cancellation. The first request wins: a later one leaves
        `cancel_requested_by` as it was but still returns the job. None once the job is terminal."""
        return first(
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
        return await self._transition(
            "UPDATE jobs SET hub_state = ?, hub_url = ?, hub_error = ?, hub_commit = ?"
            " WHERE id = ? AND state = 'succeeded' RETURNING *",
            (state, url, error, commit, job_id),
            now=self._clock(),
            announce=True,  # the first publish outcome ends the job's story
        )

    async def _transition(
        self,
        sql: str,
        params: Sequence[Any],
        *,
        now: float | None = None,
        also: Also | None = None,
        announce: bool = False,
    ) -> Job | None:
        """One guarded UPDATE ... RETURNING * of a job and, in the same transaction, what it writes beside
        the row (`also`), the status edit it owes, and with `announce` the completion message once the
        job's story ended (it is not waiting for its publish). None, writing nothing, when refused.
        Without `now`, the clock is read once the UPDATE went through."""
        async with self._db.transaction() as db:
            updated = await db.execute_fetchall(sql, params)
            if not updated:
                return None
            now = self._clock() if now is None else now
            job = to_job(updated[0])
            if also is not None:
                await also(db, job)
            await self.outbox.status_changed(db, job.id, now)
            if announce and not job.publish_pending:
                await self.outbox.owe_completion(db, job, now)
            return job


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
