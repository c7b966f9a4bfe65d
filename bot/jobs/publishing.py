"""The publish step of a job, after it succeeded (push requested) or by hand (/push, `qlora-bot push`):
publish its adapter and record how it went, hub_state none -> pushed | push_failed."""

from __future__ import annotations

import logging
import secrets
from pathlib import Path

from bot.hub.failures import redact
from bot.hub.publisher import HubPublisher, PublishRequest
from bot.jobs.outcomes import adapter_name
from bot.loss_chart import loss_points
from protocol.errors import UserError
from protocol.events import Done
from protocol.job_folder import JobFolder
from storage.models import Job
from storage.store import Store

log = logging.getLogger(__name__)


async def publish_job(
    store: Store,
    publisher: HubPublisher,
    job: Job,
    *,
    repo: str | None = None,
    private: bool | None = None,
    any_namespace: bool = False,
) -> Job:
    """Publish a succeeded job's adapter; returns the job with its new hub state. Never raises for a
    failed publish: the reason is stored (hub_error) for the completion message, /job and /push.
    `any_namespace`: an admin asked, so `repo` may lie outside the bot's namespace."""
    events = [stored.event for stored in await store.events(job.id)]
    done = next((event for event in reversed(events) if isinstance(event, Done)), None)
    train, evals = loss_points(events)
    name = adapter_name(job)
    request = PublishRequest(
        folder=Path(job.adapter_path or JobFolder(Path(job.folder)).adapter),
        name=name,
        private=job.hub_private if private is None else private,
        repo=repo,
        spec=job.spec,
        metrics=done.metrics if done is not None else {},
        train_loss=train,
        eval_loss=evals,
        adapter=name,  # the repo is recorded as created for this adapter; only it may publish there again
        job_id=job.id,
        any_namespace=any_namespace,
    )
    try:
        published = await publisher.publish(request)
    except UserError as error:
        log.warning("publishing job %s failed: %s", job.id, error)
        updated = await store.set_hub_state(
            job.id, "push_failed", error=redact(str(error), publisher.access.token)
        )
    except Exception:
        reference = secrets.token_hex(4)
        log.exception("publishing job %s failed (ref %s)", job.id, reference)
        updated = await store.set_hub_state(
            job.id, "push_failed", error=f"an internal error (reference {reference}); admins can look it up"
        )
    else:
        log.info("job %s published to %s (commit %s)", job.id, published.url, published.commit)
        updated = await store.set_hub_state(job.id, "pushed", url=published.url, commit=published.commit)
        await store.set_adapter_hub_repo(name, published.repo_id)
    return updated or job
