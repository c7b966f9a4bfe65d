"""Where a publish may write, settled before anything is uploaded: the namespace rule, the record of the
repos qlora-bot created (a repo that already exists is written again only for the adapter it was created
for), and the visibility the job asked for, set on the Hub and read back.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bot.hub.failures import classify
from protocol.errors import UserError
from storage.hub_repos import HubRepos

OTHER_REPO_HINT = (
    "choose another repo name (/push repo:NAMESPACE/NAME, or `qlora-bot push --repo`); "
    "nothing was written to that repo"
)


class RepoRefused(UserError):
    """The publish may not go there, or not as asked; nothing was uploaded. Never retried."""


def require_namespace(repo_id: str, own: str) -> None:
    """Refuse a repo outside `own` (hub.namespace, else the token's user); admins skip this check."""
    namespace = repo_id.split("/", 1)[0]
    if namespace.casefold() != own.casefold():
        raise RepoRefused(
            f"{repo_id} is outside this bot's Hub namespace {own}; only admins may publish elsewhere",
            f"name a repo {own}/NAME, or leave repo out to publish to {own}/<adapter name>",
        )


async def create_and_record(
    api: Any, repos: HubRepos, repo_id: str, *, adapter: str, job_id: int | None, private: bool
) -> tuple[str, bool]:
    """Create the repo; when this call created it, record it as made for `adapter` at once, before
    anything is uploaded, so a retry, a crash or a later /push finds a repo it may write (its create then
    answers 409). Returns (the repo's URL, whether this call created it)."""
    url, created = await asyncio.to_thread(create_repo, api, repo_id, private)
    if created:
        await repos.record_created(repo_id, adapter=adapter, job_id=job_id)
    return url, created


async def require_ours(repos: HubRepos, repo_id: str, adapter: str) -> None:
    """For a repo that already exists: refuse unless qlora-bot created it for this same adapter, since
    publishing there replaces files of someone's own repo or of another adapter's."""
    record = await repos.created(repo_id)
    if record is not None and record.adapter == adapter:
        return
    whose = "qlora-bot did not create it" if record is None else "qlora-bot created it for another adapter"
    raise RepoRefused(
        f"the Hub repo {repo_id} already exists and {whose}, so publishing there would replace its files",
        OTHER_REPO_HINT,
    )


def create_repo(api: Any, repo_id: str, private: bool) -> tuple[str, bool]:
    """(the repo's URL, whether this call created it). A 409 means it exists; its body carries the URL."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return str(api.create_repo(repo_id, private=private, exist_ok=False, repo_type="model")), True
    except HfHubHTTPError as error:
        if error.response is None or error.response.status_code != 409:
            raise
        try:
            url = error.response.json().get("url")
        except ValueError:
            url = None
        return str(url or f"{api.endpoint}/{repo_id}"), False


def set_visibility(api: Any, repo_id: str, private: bool, token: str | None) -> None:
    """Make the repo private or public as asked and read it back; raises RepoRefused when the Hub
    refuses or does not apply the change. Runs before any upload, so a refusal uploads nothing."""
    if _is_private(api, repo_id) is private:
        return
    wanted = "private" if private else "public"
    hint = (
        f"make it {wanted} in its settings on the Hub (or check HF_TOKEN may change them), then publish again"
    )
    try:
        api.update_repo_settings(repo_id, private=private, repo_type="model")
    except Exception as error:
        response = getattr(error, "response", None)
        if response is None or classify(error, token).retryable:
            raise  # a connection problem, 429 or 5xx: the publisher's retries apply
        status = response.status_code
        raise RepoRefused(
            f"could not make the Hub repo {repo_id} {wanted} (HTTP {status}); nothing was uploaded", hint
        ) from None
    if _is_private(api, repo_id) is not private:
        raise RepoRefused(f"the Hub repo {repo_id} is still not {wanted}; nothing was uploaded", hint)


def _is_private(api: Any, repo_id: str) -> bool | None:
    """None when the Hub does not say: never taken for either answer."""
    private = api.repo_info(repo_id, repo_type="model").private
    return private if isinstance(private, bool) else None
