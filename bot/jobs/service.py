"""JobService: the one API the Discord cogs and the command line use to submit, watch and cancel jobs.

It validates and enforces quotas, writes through the Store, and (when this process holds the runner
lock) runs the queue through a JobRunner. Without the runner it still works against the database,
so a CLI beside a running bot submits, follows and cancels jobs the bot runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config
from bot.hub.access import HubAccess
from bot.hub.model_card import is_hub_id
from bot.hub.publisher import HubPublisher
from bot.jobs.checkpoints import checkpoint_to_resume, job_folder_of, resume_problems
from bot.jobs.executor import Executor
from bot.jobs.publishing import publish_job
from bot.jobs.recovery import reconcile
from bot.jobs.runner import JobRunner
from bot.jobs.scheduler import QueueEntry, Slot, estimate_queue
from bot.jobs.service_lock import RunnerLock
from bot.jobs.submission import (
    Placement,
    Upload,
    default_data_checker,
    disk_full_refused,
    stored_upload,
    upload_label,
)
from bot.workers.data_check import DataChecker
from protocol.errors import UserError
from protocol.events import Event, Progress
from protocol.job_spec import JobSpec, spec_problems
from storage.disk_space import DiskFull
from storage.models import TERMINAL_STATES, Job, StoredEvent
from storage.store import Store

DAY_S = 24 * 3600


class RunnerBusy(UserError):
    """Another live qlora-bot process holds the runner lock of this data directory."""

    def __init__(self, holder_pid: int | None) -> None:
        who = f"pid {holder_pid}" if holder_pid else "another process"
        super().__init__(
            f"another qlora-bot process ({who}) already runs the job queue of this data directory",
            "stop it first, or set QLORA_BOT_HOME to another data directory",
        )
        self.holder_pid = holder_pid


@dataclass(frozen=True)
class Requester:
    """Who is asking: "discord:<user id>" or "local:<user>"; admins bypass quotas and may cancel any job."""

    owner: str
    is_admin: bool = False


@dataclass(frozen=True)
class JobUpdate:
    """One change a watcher should render: the job as it is now, and the new event if there is one."""

    job: Job
    event: Event | None


class JobService:
    def __init__(
        self,
        store: Store,
        config: Config,
        clock: Callable[[], float] = time.time,
        hub: HubAccess | None = None,
        data_checker: DataChecker | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.clock = clock
        self.data_checker = data_checker or default_data_checker(config)
        self.runner: JobRunner | None = None
        self.runner_lock = RunnerLock(config.data_dir())
        # Without a token every publish ends push_failed, saying HF_TOKEN is not set.
        self.hub = HubPublisher(hub or HubAccess.for_config(config, token=None), store.hub_repos)
        self._changed: dict[int, asyncio.Event] = defaultdict(asyncio.Event)
        self._publishing: dict[int, asyncio.Task[Job]] = {}
        self._unrecorded: dict[int, DiskFull] = {}  # ended jobs whose end could not be written yet

    # --- running the queue (only in the process that holds the runner lock)

    async def start_runner(self, executor: Executor, slots: list[Slot]) -> None:
        """Take the data directory's runner lock, settle what a dead runner left, then run every queued
        job in the fair order. Raises RunnerBusy when another live process holds the lock: only the
        holder may decide that a `running` job's worker is an orphan, so no other process ever stops one.
        """
        if not self.runner_lock.try_acquire():
            raise RunnerBusy(self.runner_lock.holder_pid())
        queue, worker = self.config.queue, self.config.worker
        await reconcile(
            self.store,
            executor,
            max_attempts=queue.max_attempts,
            max_wall_time_h=queue.max_wall_time_h,
            grace_s=worker.cancel_grace_s,
        )
        self.runner = JobRunner(
            self.store,
            executor,
            slots,
            queue,
            worker,
            self._notify,
            self._concluded,
            self._unrecorded_end,
            cache_dir=self.config.cache_dir(),
        )
        self.runner.start()
        for job in await self.store.jobs_to_publish():  # this process stopped in their publish step
            self._concluded(job)

    async def close(self, grace_s: float | None = None) -> None:
        if self.runner is not None:
            await self.runner.close(grace_s)
            self.runner = None
        self.runner_lock.release()
        # An interrupted publish leaves hub_state 'none': the next start publishes the job again.
        for task in list(self._publishing.values()):
            task.cancel()
        await asyncio.gather(*self._publishing.values(), return_exceptions=True)
        await self.hub.drain()  # a Hub repo created just before the cancel is still recorded as ours

    # --- commands

    async def submit(
        self,
        spec: JobSpec,
        requester: Requester,
        *,
        idempotency_key: str | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        job_dir: Path | None = None,
        upload: Upload | None = None,
        push: bool = False,
        private: bool = True,
    ) -> Job:
        """Queue a job (one idempotency key, one job) in `job_dir`, by default the data dir's jobs/ID.

        With an `upload`, the file becomes the job's dataset: it is written aside first and moved
        into the job folder while the job is created, so no runner can start the job without it.
        """
        if idempotency_key is not None:
            existing = await self.store.job_by_idempotency_key(idempotency_key)
            if existing is not None:
                return existing
        problems = spec_problems(spec) + resume_problems(spec)
        if problems:
            raise UserError("invalid job settings: " + "; ".join(problems), "change the settings named above")
        if spec.resume_from:
            await self._check_checkpoint_is_free(spec.resume_from)
        if not requester.is_admin:
            await self._check_quotas(requester.owner)
        if upload is not None:
            dataset = dataclasses.replace(spec.dataset, label=upload_label(upload), kind="upload")
            spec = spec.replace(dataset=dataset)
        placement = Placement(self.config.jobs_dir(), job_dir)
        with disk_full_refused(self.config.data_dir()), placement.staged(upload):
            # The worker's own data checks, now: a file that fails them gets no job (the worker checks again).
            await self.data_checker.check(*placement.as_checked(spec))
            job, _created = await self.store.create_job(
                owner=requester.owner,
                name=spec.name or "adapter",
                spec=placement.stored(spec),
                jobs_dir=placement.jobs_dir,
                folder=placement.job_dir,
                prepare_folder=placement.fill,
                idempotency_key=idempotency_key,
                guild_id=guild_id,
                channel_id=channel_id,
                push_requested=push,
                hub_private=private,
            )
        Path(job.folder).mkdir(parents=True, exist_ok=True)
        self._notify(job.id)
        return job

    async def resume(
        self,
        job_id: int,
        requester: Requester,
        *,
        idempotency_key: str | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
    ) -> Job:
        """Queue a new job that continues a cancelled or failed one from its newest checkpoint: same
        settings, dataset and publishing, its own folder (the old job's is only read)."""
        job = await self.get(job_id)
        if job.owner != requester.owner and not requester.is_admin:
            raise UserError(f"job {job_id} is not yours", "only its owner or an admin can resume it")
        if not job.is_terminal:
            raise UserError(
                f"job {job_id} has not ended ({job.state})", "it resumes from its own checkpoints by itself"
            )
        if job.state == "succeeded":
            raise UserError(f"job {job_id} finished", "its adapter is ready; start a new job to train more")
        checkpoint = checkpoint_to_resume(job)
        if checkpoint is None:
            raise UserError(f"job {job_id} saved no checkpoint to resume from", "start it again as a new job")
        # One press, one continuation: a second would train the same steps again beside the first.
        for later in await self.store.jobs_resuming_from(checkpoint):
            if later.state not in ("failed", "cancelled"):
                raise UserError(
                    f"job {job_id} was already resumed as job {later.id} ({later.state})",
                    f"follow job {later.id}",
                )
        upload = None
        # An upload is copied into the new job's folder: a worker reads no other job's files.
        if job.spec.dataset.kind == "upload":
            try:
                upload = await asyncio.to_thread(stored_upload, job)
            except OSError:
                raise UserError(
                    f"the dataset file of job {job_id} is gone", "start a new job with the file attached"
                ) from None
        return await self.submit(
            job.spec.replace(resume_from=checkpoint),
            requester,
            idempotency_key=idempotency_key,
            guild_id=guild_id if guild_id is not None else job.guild_id,
            channel_id=channel_id if channel_id is not None else job.channel_id,
            upload=upload,
            push=job.push_requested,
            private=job.hub_private,
        )

    async def job_of_checkpoint(self, checkpoint: str) -> Job | None:
        """The job that wrote this checkpoint, when it lies in a job folder this database knows."""
        folder = job_folder_of(checkpoint)
        return await self.store.job_in_folder(str(folder)) if folder is not None else None

    async def cancel(self, job_id: int, requester: Requester) -> Job:
        """Cancel a queued job at once, or ask a running one to checkpoint and stop."""
        job = await self.get(job_id)
        if job.owner != requester.owner and not requester.is_admin:
            raise UserError(f"job {job_id} is not yours", "only its owner or an admin can cancel it")
        if job.is_terminal:
            raise UserError(f"job {job_id} already ended ({job.state})", "nothing to cancel")
        await self.store.request_cancel(job_id, requester.owner)
        if job.state == "queued":
            cancelled = await self.store.finish_job(
                job_id, "cancelled", error_kind="cancelled", error_message="cancelled"
            )
            if cancelled is not None:
                self._notify(job_id)
                return cancelled
        if self.runner is not None:
            self.runner.cancel(job_id)
        self._notify(job_id)
        return await self.get(job_id)

    async def publish(
        self, job_id: int, requester: Requester, *, repo: str | None = None, private: bool | None = None
    ) -> Job:
        """Publish (or publish again) a succeeded job's adapter now; the returned job says how it went
        (hub_state pushed with hub_url, or push_failed with hub_error). `private` None: as the job asked.
        A non-admin's `repo` outside the bot's Hub namespace is refused here, before any Hub write."""
        job = await self.get(job_id)
        if job.owner != requester.owner and not requester.is_admin:
            raise UserError(f"job {job_id} is not yours", "only its owner or an admin can publish it")
        if job.state != "succeeded":
            raise UserError(
                f"job {job_id} has no adapter to publish ({job.state})",
                "only a succeeded job can be published",
            )
        if repo is not None and not is_hub_id(repo):
            raise UserError(f"{repo!r} is not a Hub repo id", "write it as namespace/name")
        if repo is not None and not requester.is_admin:
            await self.hub.check_namespace(repo)
        running = self._publishing.get(job_id)
        if running is not None:  # the automatic publish is under way: its outcome is the answer
            return await asyncio.shield(running)
        return await asyncio.shield(
            self._start_publish(job, repo=repo, private=private, admin=requester.is_admin)
        )

    # --- queries

    async def get(self, job_id: int) -> Job:
        job = await self.store.get_job(job_id)
        if job is None:
            raise UserError(f"there is no job {job_id}", "list jobs to find the id")
        return job

    async def list(
        self, *, owner: str | None = None, states: Sequence[str] | None = None, limit: int = 50
    ) -> list[Job]:
        return await self.store.list_jobs(owner=owner, states=states, limit=limit)

    async def events(self, job_id: int, after_id: int = 0) -> list[StoredEvent]:
        return await self.store.events(job_id, after_id=after_id)

    async def queue(self) -> list[QueueEntry]:
        """Every queued job with its position and expected wait."""
        queued = await self.store.queued_jobs()
        running = await self.store.running_jobs()
        estimate = await self._job_estimate_s()
        remaining = {}
        for job in running:
            progress = await self.last_progress(job.id)
            if progress is not None and progress.eta_s is not None:
                remaining[job.id] = progress.eta_s
            elif job.started_at is not None:
                remaining[job.id] = max(estimate - (self.clock() - job.started_at), 0.0)
        slot_count = len(self.runner.slots) if self.runner is not None else 1
        last_started = await self.store.last_start_times()
        return estimate_queue(queued, running, remaining, slot_count, estimate, last_started)

    async def last_progress(self, job_id: int) -> Progress | None:
        """The job's newest progress event (step, loss, ETA), if it reported one."""
        stored = await self.store.last_event(job_id, "progress")
        return stored.event if stored is not None and isinstance(stored.event, Progress) else None

    async def subscribe(self, job_id: int, poll_s: float = 1.0) -> AsyncIterator[JobUpdate]:
        """Every event of the job (past ones first) and every state change, until it ends (and, when it
        was asked to, until its publish step ended too).

        Reads the store, so it works for jobs another process runs; a local change wakes it at once.
        """
        last_id, last_job = 0, None
        while True:
            job = await self.get(job_id)
            fresh = await self.store.events(job_id, after_id=last_id)
            for stored in fresh:
                last_id = stored.id
                yield JobUpdate(job, stored.event)
            if job != last_job and not fresh:
                yield JobUpdate(job, None)
            last_job = job
            if job.state in TERMINAL_STATES and not job.publish_pending:
                return
            if job_id in self._unrecorded:
                raise _unrecorded_error(self._unrecorded[job_id], job_id)
            changed = self._changed[job_id]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), poll_s)
            changed.clear()

    # --- internals

    async def _check_checkpoint_is_free(self, checkpoint: str) -> None:
        """A job that has not ended resumes from its own checkpoints: a second job from the same one
        would train the same steps twice, side by side."""
        owner = await self.job_of_checkpoint(checkpoint)
        if owner is not None and not owner.is_terminal:
            raise UserError(
                f"resume_from: {checkpoint} belongs to job {owner.id}, which has not ended ({owner.state}) "
                "and resumes from its newest checkpoint by itself",
                f"follow it (`qlora-bot job {owner.id}`), or cancel it first",
            )

    async def _check_quotas(self, owner: str) -> None:
        queue = self.config.queue
        waiting = await self.store.count_jobs(owner=owner, states=["queued"])
        if waiting >= queue.max_queued_per_user:
            raise UserError(
                f"you already have {waiting} jobs waiting (limit queue.max_queued_per_user = "
                f"{queue.max_queued_per_user})",
                "wait for one to start, or cancel one",
            )
        today = await self.store.count_jobs(owner=owner, since=self.clock() - DAY_S)
        if today >= queue.max_jobs_per_day:
            raise UserError(
                f"you submitted {today} jobs in the last 24 hours (limit queue.max_jobs_per_day = "
                f"{queue.max_jobs_per_day})",
                "try again later, or ask an admin",
            )

    async def _job_estimate_s(self) -> float:
        runtimes = await self.store.recent_runtimes()
        return statistics.median(runtimes) if runtimes else self.config.queue.default_job_minutes * 60

    def _notify(self, job_id: int) -> None:
        self._changed[job_id].set()

    def _unrecorded_end(self, job_id: int, full: DiskFull) -> None:
        self._unrecorded[job_id] = full
        self._notify(job_id)

    def _concluded(self, job: Job) -> None:
        if job.publish_pending and job.id not in self._publishing:
            self._start_publish(job)

    def _start_publish(
        self, job: Job, *, repo: str | None = None, private: bool | None = None, admin: bool = False
    ) -> asyncio.Task[Job]:
        publishing = publish_job(self.store, self.hub, job, repo=repo, private=private, any_namespace=admin)
        task = asyncio.create_task(publishing, name=f"publish-{job.id}")
        self._publishing[job.id] = task

        def finished(_task: asyncio.Task[Job]) -> None:
            self._publishing.pop(job.id, None)
            self._notify(job.id)

        task.add_done_callback(finished)
        return task


def _unrecorded_error(full: DiskFull, job_id: int) -> UserError:
    return UserError(
        f"{full}: the end of job {job_id} could not be recorded",
        "free space there: the next qlora-bot process to run the queue resumes it from its newest checkpoint",
    )
