"""Run the queue: start jobs on free slots, supervise each attempt, stop them on cancel or timeout.

The database is the queue: every decision re-reads it, so jobs submitted or cancelled by another
process (the CLI beside a running bot) are seen within a second. Each attempt is one task that pumps
its worker's events into the store and ends through outcomes.conclude.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.config import QueueConfig, WorkerConfig
from bot.jobs.executor import Executor, RunningWorker
from bot.jobs.outcomes import StopReason, conclude
from bot.jobs.scheduler import Slot, jobs_to_start
from bot.workers.train_worker import WorkerLost
from protocol.events import Checkpoint, Done, Error, Event, Phase
from protocol.launch import Launch
from storage.disk_space import DiskFull, is_disk_full
from storage.models import Job
from storage.store import Store

log = logging.getLogger(__name__)
POLL_INTERVAL_S = 1.0
MAX_RECORD_RETRY_S = 30.0


@dataclass
class _Attempt:
    job: Job
    slot: Slot
    worker: RunningWorker | None = None
    stop_reason: StopReason | None = None
    disk_full: DiskFull | None = None  # its events could not be recorded: the job fails saying so
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


class JobRunner:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        slots: list[Slot],
        queue: QueueConfig,
        worker: WorkerConfig,
        notify: Callable[[int], None],
        on_concluded: Callable[[Job], None] | None = None,
        on_unrecorded: Callable[[int, DiskFull], None] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.store = store
        self.executor = executor
        self.slots = slots
        self.queue = queue
        self.worker_config = worker
        self.notify = notify
        self.on_concluded = on_concluded  # e.g. start the publish step of a job that succeeded
        # A job's end that cannot be written yet (no space even after the reserve): followers are told
        # now instead of waiting on a job that stays `running` in the database.
        self.on_unrecorded = on_unrecorded
        # Handed to every attempt: derived data (tokenized datasets) shared between jobs; None: no cache.
        self.cache_dir = cache_dir.absolute() if cache_dir is not None else None
        self._active: dict[int, _Attempt] = {}
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self._closing = False

    # --- life cycle

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name="job-runner")

    def wake(self) -> None:
        self._wake.set()

    async def close(self, grace_s: float | None = None) -> None:
        """Stop scheduling; running workers checkpoint and their jobs go back to the queue."""
        self._closing = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for attempt in list(self._active.values()):
            self._stop(attempt, "shutdown", grace_s)
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def is_running_here(self, job_id: int) -> bool:
        return job_id in self._active

    def active_job_ids(self) -> list[int]:
        return sorted(self._active)

    def kill(self, job_id: int) -> None:
        """No more waiting for a checkpoint: SIGKILL the job's worker (its job ends cancelled)."""
        attempt = self._active.get(job_id)
        if attempt is not None and attempt.worker is not None:
            attempt.stop_reason = attempt.stop_reason or "cancel"
            attempt.worker.kill()

    def cancel(self, job_id: int) -> None:
        """Signal a running job's worker now (its cancel request is already in the store)."""
        attempt = self._active.get(job_id)
        if attempt is not None:
            self._stop(attempt, "cancel")

    # --- scheduling

    async def _loop(self) -> None:
        while not self._closing:
            try:
                await self._tick()
            except DiskFull as full:
                log.error("no job can start: %s", full)
            except Exception:
                log.exception("scheduling failed; retrying")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_INTERVAL_S)

    async def _tick(self) -> None:
        running = await self.store.running_jobs()
        for job in running:  # cancel requests written by another process
            attempt = self._active.get(job.id)
            if attempt is not None and job.cancel_requested_by and attempt.stop_reason is None:
                self._stop(attempt, "cancel")
        queued = await self.store.queued_jobs()
        busy = {attempt.slot for attempt in self._active.values()}
        free = [slot for slot in self.slots if slot not in busy]
        last_started = await self.store.last_start_times()
        chosen = jobs_to_start(queued, running, len(free), self.queue.max_running_per_user, last_started)
        for job, slot in zip(chosen, free, strict=False):
            if job.cancel_requested_by:
                await self.store.finish_job(
                    job.id, "cancelled", error_kind="cancelled", error_message="cancelled"
                )
                self.notify(job.id)
                continue
            started = await self.store.start_job(job.id, slot=slot.name, resumed_from=job.resume_point)
            if started is None:  # cancelled or taken between the read and now
                continue
            attempt = _Attempt(job=started, slot=slot)
            self._active[job.id] = attempt
            task = asyncio.create_task(self._supervise(attempt), name=f"job-{job.id}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            self.notify(job.id)

    # --- one attempt

    async def _supervise(self, attempt: _Attempt) -> None:
        job = attempt.job
        final: Done | Error | WorkerLost | None = None
        try:
            # The attempt resumes from the job's newest checkpoint, else the one it was asked to continue.
            launch = Launch(
                job_dir=job.folder,
                cache_dir=str(self.cache_dir) if self.cache_dir is not None else None,
                resume_checkpoint=job.resume_point,
            )
            try:
                attempt.worker = await self.executor.launch(job.spec, launch, attempt.slot)
            except OSError as error:
                if is_disk_full(error):
                    raise DiskFull(Path(job.folder)) from error
                final = Error(kind="internal", message=f"could not start the worker: {error}")
                await self.store.append_event(job.id, job.attempt, final)
                return
            if attempt.worker.pid is not None:
                await self.store.set_worker_pid(job.id, job.attempt, attempt.worker.pid)
            self._arm_wall_clock(attempt)
            if attempt.stop_reason is not None:  # cancelled while the worker was starting
                self._stop(attempt, attempt.stop_reason)
            async for item in attempt.worker.events():
                if isinstance(item, WorkerLost):
                    final = item
                    break
                await self.store.append_event(job.id, job.attempt, item)
                await self._apply(job, item)
                if isinstance(item, (Done, Error)):
                    final = item
                self.notify(job.id)
        except DiskFull as full:
            log.error("job %s: %s; it fails (its worker is stopped)", job.id, full)
            attempt.disk_full = full
            if attempt.worker is not None:
                attempt.worker.kill()
        except Exception:
            log.exception("supervising job %s failed", job.id)
            if attempt.worker is not None:
                attempt.worker.kill()
        finally:
            for timer in attempt.timers:
                timer.cancel()
            await self._conclude(attempt, final)

    async def _apply(self, job: Job, event: Event) -> None:
        if isinstance(event, Phase):
            await self.store.set_phase(job.id, event.name)
        elif isinstance(event, Checkpoint):
            await self.store.record_checkpoint(job.id, event.path)

    async def _conclude(self, attempt: _Attempt, final: Done | Error | WorkerLost | None) -> None:
        job = attempt.job
        delay_s = 1.0
        try:
            while True:
                try:
                    concluded = await self._record_outcome(attempt, final)
                    break
                except DiskFull as full:
                    # Not even the reserve's room was enough: keep trying (space may be freed), and
                    # tell the followers now. Stopping leaves it to the next start's reconciliation.
                    attempt.disk_full = attempt.disk_full or full
                    if self.on_unrecorded is not None:
                        self.on_unrecorded(job.id, full)
                    if self._closing:
                        return
                    log.error("job %s: %s; its end is recorded once there is space", job.id, full)
                    await asyncio.sleep(delay_s)
                    delay_s = min(delay_s * 2, MAX_RECORD_RETRY_S)
            if concluded is not None and concluded.is_terminal and self.on_concluded is not None:
                self.on_concluded(concluded)
        finally:
            self._active.pop(job.id, None)
            self.notify(job.id)
            self.wake()

    async def _record_outcome(self, attempt: _Attempt, final: Done | Error | WorkerLost | None) -> Job | None:
        current = await self.store.get_job(attempt.job.id) or attempt.job
        return await conclude(
            self.store,
            current,
            final,
            stop_reason=attempt.stop_reason,
            max_attempts=self.queue.max_attempts,
            max_wall_time_h=self.queue.max_wall_time_h,
            disk_full=attempt.disk_full,
        )

    def _stop(self, attempt: _Attempt, reason: StopReason, grace_s: float | None = None) -> None:
        """SIGTERM now (the worker checkpoints), SIGKILL after the grace period."""
        attempt.stop_reason = attempt.stop_reason or reason  # the first reason wins: a cancel stays a cancel
        if attempt.worker is None:
            return  # still launching: _supervise applies the stop once the worker exists
        attempt.worker.terminate()
        grace = self.worker_config.cancel_grace_s if grace_s is None else grace_s
        attempt.timers.append(asyncio.get_running_loop().call_later(grace, attempt.worker.kill))

    def _arm_wall_clock(self, attempt: _Attempt) -> None:
        limit_s = self.queue.max_wall_time_h * 3600
        elapsed = time.time() - (attempt.job.started_at or time.time())
        handle = asyncio.get_running_loop().call_later(
            max(limit_s - elapsed, 0.0), lambda: self._stop(attempt, "timeout")
        )
        attempt.timers.append(handle)
