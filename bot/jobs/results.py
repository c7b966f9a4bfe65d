"""What a job shows and left behind, read for the front ends in one place: its newest progress, its metrics,
its log and the last lines of it, its attempts, what its channel is owed; and the finished adapters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bot.jobs.job_log import job_log_tail
from protocol.events import Done, Progress
from protocol.job_folder import JobFolder
from storage.models import Adapter, Attempt, Job, OutboxEntry
from storage.store import Store


@dataclass(frozen=True)
class JobReport:
    job: Job
    progress: Progress | None  # its newest progress event
    metrics: dict  # from its done event: {} unless it succeeded
    log: Path  # its worker log, in its folder
    log_tail: str  # the job's own last lines of that log ("" while there are none)
    attempts: list[Attempt]
    owed: list[OutboxEntry]  # what the bot owes (or owed) the job's channel, oldest first
    adapter: Adapter | None = None  # what it produced, by the name `ask` takes; None unless it succeeded


@dataclass(frozen=True)
class FinishedAdapter:
    adapter: Adapter
    hub_url: str | None  # where its job published it, if it did
    final_loss: float | None = None  # its job's last training loss, when it reported one


async def last_progress(store: Store, job_id: int) -> Progress | None:
    stored = await store.last_event(job_id, "progress")
    return stored.event if stored is not None and isinstance(stored.event, Progress) else None


async def job_report(store: Store, job: Job) -> JobReport:
    log = JobFolder(Path(job.folder)).log
    return JobReport(
        job=job,
        progress=await last_progress(store, job.id),
        metrics=await _metrics(store, job.id),
        log=log,
        log_tail=job_log_tail(log),
        attempts=await store.attempts(job.id),
        owed=await store.outbox.entries(job.id),
        adapter=await store.adapter_of_job(job.id),
    )


async def _metrics(store: Store, job_id: int) -> dict:
    """From the job's done event: {} unless it succeeded."""
    done = await store.last_event(job_id, "done")
    return done.event.metrics if done is not None and isinstance(done.event, Done) else {}


async def finished_adapters(store: Store, limit: int) -> list[FinishedAdapter]:
    """Newest first, each with its Hub address when its job published it, and its final training loss."""
    listed = []
    for adapter in await store.adapters(limit=limit):
        job = await store.get_job(adapter.job_id)
        loss = (await _metrics(store, adapter.job_id)).get("final_loss")
        final_loss = float(loss) if isinstance(loss, (int, float)) else None
        listed.append(FinishedAdapter(adapter, job.hub_url if job is not None else None, final_loss))
    return listed
