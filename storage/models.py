"""The frozen records the Store hands out (jobs, attempts, stored events, adapters, owed Discord messages)
and their states.

Nothing here touches SQLite: these are what callers see, so rows never leak out of storage/.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from protocol.events import Event, event_type
from protocol.job_spec import JobSpec

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES: tuple[str, ...] = ("succeeded", "failed", "cancelled")
# The only terminal states a job that never ran may reach: it was cancelled, or refused before starting.
QUEUED_EXITS: tuple[str, ...] = ("cancelled", "failed")

HubState = Literal["none", "pushed", "push_failed"]
HUB_STATES: tuple[str, ...] = ("none", "pushed", "push_failed")

# What the outbox (migration 0003) holds: a job's status message, posted once and then edited in place
# to its newest state, and its completion ping, posted once. New kinds (thread posts) join OUTBOX_KINDS.
OUTBOX_KINDS: tuple[str, ...] = ("status", "completion")
EDITED_KINDS: tuple[str, ...] = ("status",)
OutboxState = Literal["pending", "delivered", "failed"]

# How an attempt usually ends: the three terminal states, plus the ways an attempt ends without its job
# ending (the worker died, the bot went away under it) and the job is re-queued. Not enforced: callers
# may record another word, and no migration is needed to add one.
ATTEMPT_OUTCOMES: tuple[str, ...] = ("succeeded", "failed", "cancelled", "crashed", "stopped")


@dataclass(frozen=True)
class Job:
    id: int
    owner: str  # "discord:1234" or "local:alice"
    name: str  # adapter name shown to people
    spec: JobSpec  # what was asked
    folder: str  # the job folder (protocol/job_folder.py), absolute: chosen by the bot, not in the spec
    state: JobState
    phase: str | None  # validating | loading_model | tokenizing | training | saving, while running
    attempt: int  # 1 for the first run; +1 at every requeue
    created_at: float
    started_at: float | None  # of the current or last attempt
    finished_at: float | None
    guild_id: int | None
    channel_id: int | None
    status_message_id: int | None
    completion_message_id: int | None
    idempotency_key: str | None
    cancel_requested_by: str | None  # the owner id, or "system: <reason>"
    error_kind: str | None  # user_error | oom | internal | cancelled
    error_message: str | None
    error_hint: str | None
    checkpoint_path: str | None  # newest known checkpoint, for a resume
    adapter_path: str | None
    hub_state: HubState  # "none" until published
    hub_url: str | None
    hub_error: str | None
    push_requested: bool  # publish to the Hub once the job succeeds
    hub_private: bool  # the Hub repo is private (the default)
    hub_commit: str | None = None  # the Hub commit of the last publish (migration 0002)

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def resume_point(self) -> str | None:
        """Where the next attempt starts: the job's own newest checkpoint, else the checkpoint the job
        was submitted to continue from (spec.resume_from; a checkpoint of an earlier job), else None."""
        return self.checkpoint_path or self.spec.resume_from

    @property
    def publish_pending(self) -> bool:
        """Succeeded, asked to be published, and not published (nor failed to be) yet."""
        return self.state == "succeeded" and self.push_requested and self.hub_state == "none"


@dataclass(frozen=True)
class Attempt:
    job_id: int
    number: int
    started_at: float
    finished_at: float | None
    pid: int | None
    slot: str | None  # e.g. "cuda:0" or "cpu"
    outcome: str | None  # None while running; usually one of ATTEMPT_OUTCOMES once over
    detail: str | None  # e.g. "worker killed by signal SIGKILL", "bot restarted"
    resumed_from: str | None


@dataclass(frozen=True)
class StoredEvent:
    id: int  # global and increasing: the order in which events were stored
    job_id: int
    attempt: int
    created_at: float
    event: Event

    @property
    def type(self) -> str:
        return event_type(self.event)


@dataclass(frozen=True)
class Adapter:
    name: str  # unique across all jobs
    job_id: int
    base_model: str
    path: str
    created_at: float
    hub_repo: str | None


@dataclass(frozen=True)
class OutboxEntry:
    """A message the bot owes a channel, and how delivering it went."""

    id: int
    job_id: int
    kind: str  # one of OUTBOX_KINDS
    channel_id: int
    nonce: str  # the create's nonce, and the marker that finds the message in the channel's history
    payload: str | None  # kind-specific JSON; None for status and completion (rendered from the job)
    state: OutboxState  # failed: given up after a permanent error (`error`, `error_code`)
    created_at: float
    next_attempt_at: float
    tries: int  # failed tries since the last success
    first_sent_at: float | None  # a create was handed to Discord at this time: it may exist there
    message_id: int | None
    revision: int  # edited kinds: bumped by every change the message should show
    delivered_revision: int  # the newest revision written to Discord
    delivered_hash: str | None  # the content that revision wrote, so identical content is never re-sent
    delivered_at: float | None
    error: str | None  # the last failure, e.g. "Missing Permissions (50013)"
    error_code: int | None

    @property
    def posted(self) -> bool:
        return self.message_id is not None


@dataclass(frozen=True)
class HubRepo:
    """A Hub repo qlora-bot created (migration 0004): publishing into it is allowed for `adapter` only."""

    repo_id: str  # "namespace/name"
    adapter: str  # a job's adapter name, or "folder:<path>" for a folder published by hand
    job_id: int | None
    created_at: float
