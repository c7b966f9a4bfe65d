"""JobService: the one API the Discord cogs and the command line use to submit, watch, cancel, publish and
ask jobs, and to read what they left.

It validates every request and enforces quotas, writes through the Store, and (when this process holds
the runner lock) runs the queue through a JobRunner. Without the runner it still works against the
database, so a CLI beside a running bot submits, follows and cancels jobs the bot runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config
from bot.hub.access import HubAccess
from bot.hub.publisher import HubPublisher, Published
from bot.jobs.admission import check_checkpoint_is_free, check_quotas, job_of_checkpoint, resume_point
from bot.jobs.asking import Answering, Question, start_ask
from bot.jobs.checkpoints import resume_problems
from bot.jobs.executor import Executor
from bot.jobs.publishing import check_publishable, publish_folder, publish_job
from bot.jobs.recovery import reconcile
from bot.jobs.requests import JobRequest, Requester, checked_request
from bot.jobs.results import FinishedAdapter, JobReport, finished_adapters, job_report, last_progress
from bot.jobs.runner import JobRunner
from bot.jobs.scheduler import QueueEntry, Slot
from bot.jobs.service_lock import RunnerBusy, RunnerLock
from bot.jobs.submission import Placement, Upload, default_data_checker, disk_full_refused, upload_label
from bot.jobs.waiting import queue_entries
from bot.workers.data_check import DataChecker
from bot.workers.serve_worker import ServeClient
from protocol.errors import UserError
from protocol.events import Event, Progress
from protocol.job_spec import JobSpec, spec_problems
from storage.disk_space import DiskFull
from storage.models import TERMINAL_STATES, Adapter, Job, StoredEvent
from storage.store import Store

# The front ends import these from here.
__all__ = ["EndUnrecorded", "JobService", "JobUpdate", "Requester", "RunnerBusy"]


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

    async def submit_request(
        self,
        request: JobRequest,
        requester: Requester,
        *,
        idempotency_key: str | None = None,
        guild_id: int | None = None,
        channel_id: int | None = None,
        job_dir: Path | None = None,
        push: bool = False,
        private: bool = True,
    ) -> Job:
        """A new job as a front end's options asked for it: checked (allow-list, caps, the dataset's name,
        the attached file) for whoever asks, then queued by submit()."""
        spec, upload = await checked_request(request, requester, self.config)
        return await self.submit(
            spec,
            requester,
            idempotency_key=idempotency_key,
            guild_id=guild_id,
            channel_id=channel_id,
            job_dir=job_dir,
            upload=upload,
            push=push,
            private=private,
        )

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
        """Queue a job from a whole spec (one idempotency key, one job) in `job_dir`, by default the data
        dir's jobs/ID. Front ends call submit_request, which checks what a person may ask for first.

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
            await check_checkpoint_is_free(self.store, spec.resume_from)
        if not requester.is_admin:
            await check_quotas(self.store, self.config.queue, requester.owner, self.clock())
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
        checkpoint, upload = await resume_point(self.store, job, requester)
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
        return await job_of_checkpoint(self.store, checkpoint)

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

    def kill(self, job_id: int) -> None:
        """Stop the job's worker now, without a checkpoint (a second Ctrl-C), when it runs here."""
        if self.runner is not None:
            self.runner.kill(job_id)

    async def publish(
        self, job_id: int, requester: Requester, *, repo: str | None = None, private: bool | None = None
    ) -> Job:
        """Publish (or publish again) a succeeded job's adapter now; the returned job says how it went
        (hub_state pushed with hub_url, or push_failed with hub_error). `private` None: as the job asked.
        A non-admin's `repo` outside the bot's Hub namespace is refused here, before any Hub write."""
        job = await self.get(job_id)
        check_publishable(job, requester, repo)
        if repo is not None and not requester.is_admin:
            await self.hub.check_namespace(repo)
        running = self._publishing.get(job_id)
        if running is not None:  # the automatic publish is under way: its outcome is the answer
            return await asyncio.shield(running)
        return await asyncio.shield(
            self._start_publish(job, repo=repo, private=private, admin=requester.is_admin)
        )

    async def publish_folder(
        self, folder: Path, requester: Requester, *, repo: str, private: bool | None = None
    ) -> Published:
        """Publish an adapter folder of this machine (the terminal's: `requester` must be on it) to `repo`;
        raises UserError when it fails. `private` None: hub.private in config.toml."""
        if not requester.on_this_machine:
            raise UserError("only the command line publishes folders", "publish a job's adapter instead")
        private = self.config.hub.private if private is None else private
        return await publish_folder(
            self.store, self.hub, folder, repo=repo, private=private, any_namespace=requester.is_admin
        )

    async def ask(self, question: Question, requester: Requester, client: ServeClient) -> Answering:
        """An ask of an adapter, resolved and checked for `requester`; iterate its events() to stream it."""
        return await start_ask(self.store, self.hub.access, self.config, question, requester, client)

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

    async def queue(self, slot_count: int | None = None) -> list[QueueEntry]:
        """Every queued job with its position and expected wait (`slot_count`: another process's queue)."""
        slot_count = slot_count or (len(self.runner.slots) if self.runner is not None else 1)
        default_s = self.config.queue.default_job_minutes * 60
        return await queue_entries(self.store, slot_count, self.clock(), default_s)

    async def last_progress(self, job_id: int) -> Progress | None:
        """The job's newest progress event (step, loss, ETA), if it reported one."""
        return await last_progress(self.store, job_id)

    def running_here(self) -> list[int]:
        """The jobs whose workers this process runs, in id order."""
        return sorted(self.runner.active_job_ids()) if self.runner is not None else []

    async def report(self, job_id: int) -> JobReport:
        """What the job shows and left: progress, metrics, its log's last lines, attempts, owed messages."""
        return await job_report(self.store, await self.get(job_id))

    async def adapter(self, name: str) -> Adapter | None:
        return await self.store.adapter(name)

    async def adapters(self, limit: int = 50) -> list[Adapter]:
        """The finished adapters, newest first."""
        return await self.store.adapters(limit=limit)

    async def finished_adapters(self, limit: int = 50) -> list[FinishedAdapter]:
        """The finished adapters, newest first, each with where its job published it."""
        return await finished_adapters(self.store, limit)

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
                raise EndUnrecorded(self._unrecorded[job_id], job_id)
            changed = self._changed[job_id]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), poll_s)
            changed.clear()

    # --- internals

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


class EndUnrecorded(UserError):
    """The job ended but the disk was too full to record it: not a refusal of the request, a failure."""

    def __init__(self, full: DiskFull, job_id: int) -> None:
        super().__init__(
            f"{full}: the end of job {job_id} could not be recorded",
            "free space there: the next qlora-bot process to run the queue resumes it from its newest "
            "checkpoint",
        )
