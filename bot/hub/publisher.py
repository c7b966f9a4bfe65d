"""Publish an adapter folder to the Hub from the event loop: settle where it may go (bot/hub/destination.py),
stage the card, the chart and the public part of the adapter record (bot/hub/public_record.py), upload in a
worker thread, and retry with backoff on 429, 5xx and connection errors. The adapter folder is only read.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import tempfile
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from bot.hub.access import HubAccess
from bot.hub.destination import create_and_record, require_namespace, require_ours, set_visibility
from bot.hub.failures import HubFailure, classify
from bot.hub.model_card import CardFacts, card_facts, render_card
from bot.hub.public_record import public_record
from bot.hub.upload import Published, base_model_license, commit_adapter
from bot.loss_chart import Points, loss_chart_png
from protocol.codec import to_dict
from protocol.errors import ProtocolError, UserError
from protocol.job_folder import ADAPTER_RECORD, LOSS_CHART, MODEL_CARD, AdapterRecord, read_record
from protocol.job_spec import JobSpec
from storage.hub_repos import HubRepos

log = logging.getLogger(__name__)
WEIGHTS = "adapter_model.safetensors"
CHART_FILE = LOSS_CHART  # beside the card in the repo
NO_TOKEN_HINT = "set HF_TOKEN to a token with write access, then retry with /push or `qlora-bot push`"
T = TypeVar("T")


class PublishFailed(UserError):
    """The publish did not happen; the message is safe to store and show (it never holds the token)."""


@dataclass(frozen=True)
class PublishRequest:
    folder: Path  # the adapter folder (read only)
    name: str  # the adapter's name: the repo name unless `repo` is given
    private: bool  # the repo's visibility, set before the upload (also on a repo that exists)
    repo: str | None = None  # "namespace/name"; None: hub.namespace (or the token's user) / name
    spec: JobSpec | None = None  # the job's settings, for the card (else read from the folder's record)
    metrics: Mapping[str, Any] = field(default_factory=dict)
    train_loss: Points = field(default_factory=list)
    eval_loss: Points = field(default_factory=list)
    adapter: str | None = None  # what a repo is created for, as recorded (storage/hub_repos.py); None: name
    job_id: int | None = None  # the job of the adapter, when there is one
    any_namespace: bool = False  # an admin's publish: `repo` may name a namespace other than ours

    @property
    def adapter_key(self) -> str:
        return self.adapter or self.name


class HubPublisher:
    def __init__(
        self,
        access: HubAccess,
        repos: HubRepos,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.access = access
        self.repos = repos  # the repos qlora-bot created: the only ones it writes into again
        self._sleep = sleep
        self._namespace: str | None = None  # whoami is strictly rate-limited: ask once per process
        self._claims: set[asyncio.Future[tuple[str, bool]]] = set()  # creates not yet recorded

    async def publish(self, request: PublishRequest) -> Published:
        """Publish or raise PublishFailed (or RepoRefused, before anything is written where it may not
        go), after up to hub.max_attempts tries of a retryable failure."""
        self._require_token()
        if not (request.folder / WEIGHTS).is_file():
            raise PublishFailed(
                f"the adapter files are missing ({request.folder / WEIGHTS})", "train the adapter again"
            )
        try:
            record = read_record(request.folder)
        except ProtocolError as error:
            raise PublishFailed(
                f"the adapter record cannot be read ({error})", "train the adapter again"
            ) from None
        with tempfile.TemporaryDirectory(prefix="qlora-bot-publish-") as staging:
            return await self._with_retries(
                request.name, lambda: self._publish_once(request, record, Path(staging)), request.repo
            )

    async def check_namespace(self, repo: str) -> None:
        """Refuse (RepoRefused) a repo outside this bot's namespace, hub.namespace else the token's user.
        Writes nothing: at most it asks the Hub who the token belongs to."""
        self._require_token()
        require_namespace(repo, await self._with_retries(repo, self._own_namespace, repo))

    async def drain(self) -> None:
        """Wait for the creates still in flight to be recorded (a cancelled publish leaves them running)."""
        await asyncio.gather(*self._claims, return_exceptions=True)

    async def _publish_once(
        self, request: PublishRequest, record: AdapterRecord | None, staging: Path
    ) -> Published:
        api = self.access.api()
        if request.repo is None:
            repo_id = f"{await self._own_namespace()}/{request.name}"
        else:
            repo_id = request.repo
            if not request.any_namespace:
                require_namespace(repo_id, await self._own_namespace())
        url = await self._claim(api, repo_id, request)
        await asyncio.to_thread(set_visibility, api, repo_id, request.private, self.access.token)
        return await asyncio.to_thread(self._upload_blocking, api, repo_id, url, request, record, staging)

    async def _claim(self, api: Any, repo_id: str, request: PublishRequest) -> str:
        """The repo's URL once it is ours to write for this adapter; RepoRefused for any other."""
        claim = asyncio.ensure_future(
            create_and_record(
                api,
                self.repos,
                repo_id,
                adapter=request.adapter_key,
                job_id=request.job_id,
                private=request.private,
            )
        )
        # Shielded (and awaited by drain): once the create is sent, a publish cancelled at shutdown must
        # still record the repo it may have made, or every later publish would refuse its own repo.
        self._claims.add(claim)
        claim.add_done_callback(self._claims.discard)
        url, created = await asyncio.shield(claim)
        if not created:
            await require_ours(self.repos, repo_id, request.adapter_key)
        return url

    async def _own_namespace(self) -> str:
        """hub.namespace, else the user the token belongs to."""
        if self._namespace is None:
            configured = self.access.config.namespace
            self._namespace = configured or await asyncio.to_thread(self._whoami)
        return self._namespace

    def _whoami(self) -> str:
        return self.access.api().whoami()["name"]

    async def _with_retries(self, what: str, step: Callable[[], Awaitable[T]], repo: str | None) -> T:
        """`step`, tried again on a retryable failure; a UserError (a refusal) is never retried."""
        token, config = self.access.token, self.access.config
        attempts = max(config.max_attempts, 1)
        attempt = 0
        while True:
            attempt += 1
            try:
                return await step()
            except UserError:
                raise
            except Exception as error:
                failure = classify(
                    error, token, namespace=(repo or self._namespace or config.namespace or None)
                )
                if not failure.retryable or attempt == attempts:
                    suffix = f" after {attempt} tries" if attempt > 1 else ""
                    raise PublishFailed(failure.message + suffix, _hint(failure)) from None
                delay = _delay(failure, attempt, config.backoff_s, config.max_backoff_s)
                log.warning(
                    "publishing %s: %s; try %d of %d in %.1f s",
                    what,
                    failure.message,
                    attempt + 1,
                    attempts,
                    delay,
                )
                await self._sleep(delay)

    def _require_token(self) -> None:
        if not self.access.token:
            raise PublishFailed("HF_TOKEN is not set, so nothing can be published", NO_TOKEN_HINT)

    def _upload_blocking(
        self,
        api: Any,
        repo_id: str,
        url: str,
        request: PublishRequest,
        record: AdapterRecord | None,
        staging: Path,
    ) -> Published:
        facts = card_facts(
            request.folder, request.name, record, request.spec, request.metrics, repo_id=repo_id
        )
        if facts.base_model != "unknown":
            facts = dataclasses.replace(facts, license=base_model_license(api, facts.base_model))
        staged = _stage(request, record, facts, staging)
        message = f"Upload adapter {request.name} (qlora-bot)"
        return commit_adapter(api, repo_id, url, request.folder, staged, message=message)


def _stage(
    request: PublishRequest, record: AdapterRecord | None, facts: CardFacts, staging: Path
) -> dict[str, Path]:
    """The files written for this publish, by their path in the repo: the loss chart, the public adapter
    record and the card (which names the chart only when there is one)."""
    files: dict[str, Path] = {}
    chart = loss_chart_png(request.train_loss, request.eval_loss, f"{request.name} · loss")
    if chart is not None:
        files[CHART_FILE] = _write(staging / CHART_FILE, chart)
        facts = dataclasses.replace(facts, chart_file=CHART_FILE)
    if record is not None:
        public = json.dumps(public_record(to_dict(record)), indent=2, sort_keys=True) + "\n"
        files[ADAPTER_RECORD] = _write(staging / ADAPTER_RECORD, public.encode())
    files[MODEL_CARD] = _write(staging / MODEL_CARD, render_card(facts).encode())
    return files


def _delay(failure: HubFailure, attempt: int, backoff_s: float, max_backoff_s: float) -> float:
    if failure.retry_after_s is not None:
        return min(failure.retry_after_s, max_backoff_s)
    return min(backoff_s * 2 ** (attempt - 1), max_backoff_s)


def _hint(failure: HubFailure) -> str:
    if failure.retryable:
        return "the adapter is safe on disk; retry later with /push or `qlora-bot push`"
    return "fix the cause, then retry with /push or `qlora-bot push`"


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
