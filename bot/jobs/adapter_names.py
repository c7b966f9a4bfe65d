"""How people name a finished adapter, the same in Discord and the terminal: the name shown everywhere is
NAME-JOBID (bot/jobs/outcomes.py adapter_name: unique by construction, so two jobs with the same --name
stay apart), and an ask may also give the job id alone, or the bare job name while only one finished job
carries it."""

from __future__ import annotations

from typing import Any

from bot.jobs.outcomes import adapter_name
from protocol.errors import UserError
from storage.models import Adapter
from storage.store import Store

SHOWN_IN_HINT = 8  # names an unknown-name refusal lists, newest first


def shown_name(job: Any) -> str | None:
    """The name `ask` takes for this job's adapter; None until the job succeeded (it has none)."""
    return adapter_name(job) if job.state == "succeeded" else None


async def stored_adapter(store: Store, reference: str) -> Adapter | None:
    """The finished adapter `reference` names: its shown name, its job's id, or its job's name when only
    one finished job has that name; None when it names none (it may be a folder or a Hub id). Refuses the
    id of a job without an adapter, and a job name that several finished jobs share."""
    found = await store.adapter(reference)
    if found is not None:
        return found
    job_id = _job_id(reference)
    if job_id is not None:
        return await _adapter_of_job(store, job_id)
    alike = await store.adapters_of_jobs_named(reference)
    if len(alike) > 1:
        listed = ", ".join(f"{adapter.name} (job {adapter.job_id})" for adapter in alike[:SHOWN_IN_HINT])
        raise UserError(
            f"{len(alike)} adapters come from jobs named {reference!r}: {listed}",
            "ask one of them by its name or its job id",
        )
    return alike[0] if alike else None


async def known_names(store: Store) -> str:
    """The newest adapters' names for a refusal's hint, e.g. "chat-3, chat-2"; "" when there are none."""
    return ", ".join(adapter.name for adapter in await store.adapters(limit=SHOWN_IN_HINT))


def _job_id(reference: str) -> int | None:
    """A job id as people write it: 12 (or #12)."""
    digits = reference.removeprefix("#")
    return int(digits) if digits.isascii() and digits.isdigit() else None


async def _adapter_of_job(store: Store, job_id: int) -> Adapter | None:
    """None when there is no such job: the reference may still be a folder of that name."""
    adapter = await store.adapter_of_job(job_id)
    if adapter is not None:
        return adapter
    job = await store.get_job(job_id)
    if job is None:
        return None
    # Not the job's error message: from Discord it may name the bot's files (see `qlora-bot job ID`).
    raise UserError(
        f"job {job_id} has no adapter: it is {job.state}",
        "ask the adapter of a succeeded job (`qlora-bot adapters` or /adapters lists them)",
    )
