"""How an attempt's last word becomes the job's next state: the one place that decides.

Used by the runner when a worker ends and by start-up recovery for jobs a dead bot left running, so a
crash is judged the same way whoever notices it. A crash is retried as a fault of the machine, unless it
repeats the previous attempt's before training started: that one is the input's, and would repeat again.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from bot.jobs.folder_artifacts import write_folder_artifacts
from bot.workers.train_worker import WorkerLost
from protocol.events import Done, Error, Phase
from protocol.job_folder import newest_checkpoint
from storage.disk_space import DiskFull
from storage.models import Attempt, Job
from storage.store import Store

log = logging.getLogger(__name__)

# Why the runner stopped a worker, if it did: a person's cancel, the wall-time limit, or the runner
# itself shutting down (the job is then resumed later, not ended).
StopReason = Literal["cancel", "timeout", "shutdown"]
DISK_FULL_HINT = "free space there, then submit the job again (its newest checkpoint is kept)"
# What the worker does in each phase before training, as a crash message names it.
BEFORE_TRAINING = {
    None: "starting",
    "validating": "reading, checking and tokenizing the dataset",
    "loading_model": "loading the base model",
    "tokenizing": "packing the tokenized rows",
}


async def conclude(
    store: Store,
    job: Job,
    final: Done | Error | WorkerLost | None,
    *,
    stop_reason: StopReason | None,
    max_attempts: int,
    max_wall_time_h: float,
    crash_detail: str = "",
    disk_full: DiskFull | None = None,
) -> Job | None:
    """Apply the outcome of the job's current attempt; returns the updated job (None if already moved on).

    `disk_full`: the attempt's events could not be recorded for lack of space. The job fails saying so:
    retrying would only fill the disk again, and a person has to free space first."""
    if disk_full is not None and not isinstance(final, Done):
        return await store.finish_job(
            job.id,
            "failed",
            error_kind="internal",
            error_message=str(disk_full),
            error_hint=DISK_FULL_HINT,
            attempt_detail=str(disk_full),
        )
    if isinstance(final, Done):
        # Before the job reads as succeeded: whoever follows it (a ping, the terminal) finds them there.
        await write_folder_artifacts(
            job.id, Path(job.folder), Path(final.adapter_dir), adapter_name(job), job.spec, final.metrics
        )
        finished = await store.finish_job(job.id, "succeeded", adapter_path=final.adapter_dir)
        if finished is not None:
            await store.add_adapter(
                name=adapter_name(job), job_id=job.id, base_model=job.spec.base_model, path=final.adapter_dir
            )
        return finished
    if isinstance(final, Error) and final.kind != "cancelled":
        # The worker's own verdict (bad data, OOM, a bug) stands whatever else was going on.
        return await store.finish_job(
            job.id, "failed", error_kind=final.kind, error_message=final.message, error_hint=final.hint
        )
    if stop_reason == "shutdown":
        return await store.requeue_job(
            job.id, resume_from=_resume_point(job, final), outcome="stopped", detail="the job runner stopped"
        )
    if stop_reason is not None or isinstance(final, Error):
        # Who cancelled is job.cancel_requested_by, and how to resume is each front end's to say (a
        # Resume button in Discord, a command in the terminal): the stored words name neither an owner
        # id nor a path.
        return await store.finish_job(
            job.id,
            "cancelled",
            error_kind="cancelled",
            error_message=_cancel_message(stop_reason, max_wall_time_h),
        )
    return await _crashed(store, job, final, max_attempts, crash_detail)


async def _crashed(
    store: Store, job: Job, lost: WorkerLost | None, max_attempts: int, crash_detail: str
) -> Job | None:
    detail = lost.describe() if lost is not None else crash_detail or "the worker was lost"
    attempts = await store.attempts(job.id)
    if lost is not None:
        repeated = await _repeated_crash(store, job, attempts, lost)
        if repeated is not None:
            return repeated
    crashes = 1 + sum(1 for attempt in attempts if attempt.outcome == "crashed")
    if crashes < max_attempts:
        resume = _resume_point(job, lost)
        log.warning(
            "job %s: %s; re-queued (crash %d of %d) from %s", job.id, detail, crashes, max_attempts, resume
        )
        return await store.requeue_job(job.id, resume_from=resume, outcome="crashed", detail=detail)
    hint = (
        f"see the worker log {lost.log_path}" if lost is not None else "see the worker log in the job folder"
    )
    return await store.finish_job(
        job.id,
        "failed",
        error_kind="internal",
        error_message=f"the job crashed {crashes} times (queue.max_attempts = {max_attempts}); "
        f"last: {detail}",
        error_hint=hint,
        attempt_outcome="crashed",
        attempt_detail=detail,
    )


async def _repeated_crash(store: Store, job: Job, attempts: list[Attempt], lost: WorkerLost) -> Job | None:
    """Fail the job if this attempt died before training exactly as the previous one did, else None.

    The data stage and the model load see the same input on every attempt: a second identical crash
    there (an allocator abort on a hostile row, say) is deterministic, and a third try would only
    repeat it. A first crash is still retried: the host may have been short of memory for a moment."""
    previous = [attempt for attempt in attempts if attempt.number < job.attempt]
    if not previous or previous[-1].outcome != "crashed" or previous[-1].detail != lost.describe():
        return None
    phases = await _phases_reached(store, job.id)
    phase = phases.get(job.attempt)
    if phase not in BEFORE_TRAINING or phases.get(previous[-1].number) != phase:
        return None
    doing, reason = BEFORE_TRAINING[phase], lost.reason
    if phase == "validating":
        dataset = job.spec.dataset.label or job.spec.dataset.source
        kind = "user_error"
        message = (
            f"the worker died twice in the same way while {doing} ({reason}), so the dataset {dataset} "
            "is the likely cause; the job was not retried again"
        )
        hint = (
            "look for very long rows or deeply nested values in the dataset, or try a part of it "
            f"(the worker log {lost.log_path} shows how far it got)"
        )
    else:
        kind = "internal"
        message = f"the worker died twice in the same way while {doing} ({reason}); not retried again"
        hint = f"see the worker log {lost.log_path}"
    return await store.finish_job(
        job.id,
        "failed",
        error_kind=kind,
        error_message=message,
        error_hint=hint,
        attempt_outcome="crashed",
        attempt_detail=lost.describe(),
    )


async def _phases_reached(store: Store, job_id: int) -> dict[int, str]:
    """The last phase each attempt reported; an attempt that died before reporting one is absent."""
    return {
        stored.attempt: stored.event.name
        for stored in await store.events(job_id)
        if isinstance(stored.event, Phase)
    }


def adapter_name(job: Job) -> str:
    """Unique by construction: the job id is part of it (e.g. guanaco-12)."""
    return f"{job.name}-{job.id}"


def _resume_point(job: Job, final: Done | Error | WorkerLost | None) -> str | None:
    reported = final.checkpoint if isinstance(final, Error) else None
    return newest_checkpoint(job.folder) or reported or job.checkpoint_path


def _cancel_message(stop_reason: StopReason | None, max_wall_time_h: float) -> str:
    if stop_reason == "timeout":
        return f"stopped after the maximum run time of {max_wall_time_h:g} h (queue.max_wall_time_h)"
    return "cancelled"
