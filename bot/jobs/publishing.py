"""The publish step of a job, after it succeeded (push requested) or by hand (/push, `qlora-bot push`):
publish its adapter and record how it went, hub_state none -> pushed | push_failed; and the publish of an
adapter folder named on the terminal."""

from __future__ import annotations

import dataclasses
import logging
import secrets
from pathlib import Path

from bot.hub.failures import redact
from bot.hub.model_card import is_hub_id
from bot.hub.publisher import HubPublisher, Published, PublishRequest
from bot.jobs.outcomes import adapter_name
from bot.jobs.requests import Requester
from bot.loss_chart import history_points, loss_points
from protocol.codec import to_dict
from protocol.errors import ProtocolError, UserError
from protocol.events import Done
from protocol.job_folder import JobFolder, read_loss_history, read_metrics
from storage.models import Job
from storage.store import Store

log = logging.getLogger(__name__)


def check_publishable(job: Job, requester: Requester, repo: str | None) -> None:
    """Refuse (UserError) a publish by hand that cannot be: someone else's job, no adapter, a bad repo id."""
    if job.owner != requester.owner and not requester.is_admin:
        raise UserError(f"job {job.id} is not yours", "only its owner or an admin can publish it")
    if job.state != "succeeded":
        raise UserError(
            f"job {job.id} has no adapter to publish ({job.state})", "only a succeeded job can be published"
        )
    if repo is not None and not is_hub_id(repo):
        raise UserError(f"{repo!r} is not a Hub repo id", "write it as namespace/name")


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


async def publish_folder(
    store: Store, publisher: HubPublisher, folder: Path, *, repo: str, private: bool, any_namespace: bool
) -> Published:
    """Publish an adapter folder to `repo`; raises UserError when the publish fails (nothing is recorded
    on a job: a folder is not one, unless it is a job's own adapter, whose repo it may then reuse)."""
    request = _folder_request(folder, repo, private, any_namespace)
    job = await store.job_in_folder(str(folder.parent))
    if job is not None and job.adapter_path and Path(job.adapter_path).resolve() == folder:
        request = dataclasses.replace(request, adapter=adapter_name(job), job_id=job.id)
    else:
        request = dataclasses.replace(request, adapter=f"folder:{folder}")
    return await publisher.publish(request)


def _folder_request(folder: Path, repo: str, private: bool, any_namespace: bool) -> PublishRequest:
    """A folder trained by qlora-bot sits in its job folder, beside its metrics and loss history: the card
    and chart use them when they are there."""
    try:
        metrics = read_metrics(folder.parent)
        history = read_loss_history(folder.parent)
    except ProtocolError as error:
        raise UserError(
            f"the job folder of {folder} holds a file qlora-bot cannot read ({error})",
            "move that file aside to publish without it",
        ) from None
    train, evals = history_points(history)
    return PublishRequest(
        folder=folder,
        name=repo.split("/", 1)[1],
        private=private,
        repo=repo,
        metrics=to_dict(metrics) if metrics is not None else {},
        train_loss=train,
        eval_loss=evals,
        any_namespace=any_namespace,
    )
