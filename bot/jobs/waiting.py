"""Where each queued job stands: its position, and when it is expected to start, from what the running jobs
report and how long recent jobs took."""

from __future__ import annotations

import statistics

from bot.jobs.results import last_progress
from bot.jobs.scheduler import QueueEntry, estimate_queue
from storage.store import Store


async def queue_entries(store: Store, slot_count: int, now: float, default_s: float) -> list[QueueEntry]:
    """`default_s`: the expected run time of a job while no job has finished yet."""
    queued = await store.queued_jobs()
    running = await store.running_jobs()
    runtimes = await store.recent_runtimes()
    estimate = statistics.median(runtimes) if runtimes else default_s
    remaining = {}
    for job in running:
        progress = await last_progress(store, job.id)
        if progress is not None and progress.eta_s is not None:
            remaining[job.id] = progress.eta_s
        elif job.started_at is not None:
            remaining[job.id] = max(estimate - (now - job.started_at), 0.0)
    last_started = await store.last_start_times()
    return estimate_queue(queued, running, remaining, slot_count, estimate, last_started)
