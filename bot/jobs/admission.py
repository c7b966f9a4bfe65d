"""Whether a valid job may be queued now: the per-user quotas, a checkpoint that no live job resumes from,
and what a resume of an ended job continues from."""

from __future__ import annotations

import asyncio

from bot.config import QueueConfig
from bot.jobs.checkpoints import checkpoint_to_resume, job_folder_of
from bot.jobs.requests import Requester
from bot.jobs.submission import Upload, stored_upload
from protocol.errors import UserError
from storage.models import Job
from storage.store import Store

DAY_S = 24 * 3600


async def check_quotas(store: Store, queue: QueueConfig, owner: str, now: float) -> None:
    waiting = await store.count_jobs(owner=owner, states=["queued"])
    if waiting >= queue.max_queued_per_user:
        raise UserError(
            f"you already have {waiting} jobs waiting (limit queue.max_queued_per_user = "
            f"{queue.max_queued_per_user})",
            "wait for one to start, or cancel one",
        )
    today = await store.count_jobs(owner=owner, since=now - DAY_S)
    if today >= queue.max_jobs_per_day:
        raise UserError(
            f"you submitted {today} jobs in the last 24 hours (limit queue.max_jobs_per_day = "
            f"{queue.max_jobs_per_day})",
            "try again later, or ask an admin",
        )


async def job_of_checkpoint(store: Store, checkpoint: str) -> Job | None:
    """The job that wrote this checkpoint, when it lies in a job folder this database knows."""
    folder = job_folder_of(checkpoint)
    return await store.job_in_folder(str(folder)) if folder is not None else None


async def check_checkpoint_is_free(store: Store, checkpoint: str) -> None:
    """A job that has not ended resumes from its own checkpoints: a second job from the same one
    would train the same steps twice, side by side."""
    owner = await job_of_checkpoint(store, checkpoint)
    if owner is not None and not owner.is_terminal:
        raise UserError(
            f"resume_from: {checkpoint} belongs to job {owner.id}, which has not ended ({owner.state}) "
            "and resumes from its newest checkpoint by itself",
            f"follow it (`qlora-bot job {owner.id}`), or cancel it first",
        )


async def resume_point(store: Store, job: Job, requester: Requester) -> tuple[str, Upload | None]:
    """The checkpoint a new job continues the ended `job` from, and its upload (copied into the new job's
    folder: a worker reads no other job's files); or the UserError saying why it cannot be resumed."""
    job_id = job.id
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
    for later in await store.jobs_resuming_from(checkpoint):
        if later.state not in ("failed", "cancelled"):
            raise UserError(
                f"job {job_id} was already resumed as job {later.id} ({later.state})",
                f"follow job {later.id}",
            )
    upload = None
    if job.spec.dataset.kind == "upload":
        try:
            upload = await asyncio.to_thread(stored_upload, job)
        except OSError:
            raise UserError(
                f"the dataset file of job {job_id} is gone", "start a new job with the file attached"
            ) from None
    return checkpoint, upload
