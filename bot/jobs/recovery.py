"""Start-up reconciliation: jobs a dead bot left `running` are finished, re-queued or failed.

A job's worker may have outlived the bot (it runs in its own process group): it is stopped first, so
a job never runs twice. Then the job's last recorded event decides: a result that was recorded but
not applied is applied; otherwise the job crashed and resumes from its newest checkpoint.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bot.jobs.executor import Executor
from bot.jobs.outcomes import conclude
from protocol.events import Done, Error
from storage.models import Job
from storage.store import Store

log = logging.getLogger(__name__)


async def reconcile(
    store: Store, executor: Executor, *, max_attempts: int, max_wall_time_h: float, grace_s: float
) -> list[Job]:
    """Settle every job left running; returns the jobs as they are afterwards."""
    settled = []
    for job in await store.running_jobs():
        attempts = await store.attempts(job.id)
        pid = attempts[-1].pid if attempts else None
        if await executor.stop_orphan(Path(job.folder), pid, grace_s):
            log.warning("job %s: stopped worker %s left by an earlier bot process", job.id, pid)
        final = await _recorded_result(store, job)
        updated = await conclude(
            store,
            job,
            final,
            stop_reason=None,
            max_attempts=max_attempts,
            max_wall_time_h=max_wall_time_h,
            crash_detail="the bot stopped while the job was running",
        )
        if updated is not None:
            log.warning("job %s: reconciled after a restart -> %s", job.id, updated.state)
            settled.append(updated)
    return settled


async def _recorded_result(store: Store, job: Job) -> Done | Error | None:
    """The current attempt's final event, if the worker got to report one before the bot died."""
    for name in ("done", "error"):
        stored = await store.last_event(job.id, name)
        if stored is not None and stored.attempt == job.attempt:
            return stored.event  # type: ignore[return-value]
    return None
