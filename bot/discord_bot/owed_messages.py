"""What each kind of outbox entry looks like in Discord, rendered from the job as it is now; the marker
that finds a message in a channel's history; and how an undelivered entry is described in /job.

A new kind (thread posts) is one more renderer in RENDERERS and one more name in storage's OUTBOX_KINDS.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import discord

from bot.discord_bot.cancel_button import cancel_view
from bot.discord_bot.permissions import discord_user_id
from bot.discord_bot.resume_button import resume_view
from bot.discord_bot.status_view import completion_embed, status_embed
from bot.jobs.outcomes import adapter_name
from bot.jobs.service import JobService
from bot.loss_chart import loss_chart_png, loss_points
from protocol.events import Done
from storage.models import Job, OutboxEntry

MENTION_OWNER = discord.AllowedMentions(users=True, roles=False, everyone=False)
WHAT = {"status": "the status message", "completion": "the completion message"}


@dataclass(frozen=True)
class Rendered:
    """One rendering of an owed message: what a create sends, or what an edit writes over it."""

    embed: discord.Embed
    content: str | None = None
    view: discord.ui.View | None = None
    files: tuple[tuple[str, bytes], ...] = ()  # (name, bytes): a discord.File is used up by one send
    mentions: discord.AllowedMentions | None = None

    @property
    def digest(self) -> str:
        """Identifies the content, so the same content is never written twice (also after a restart)."""
        shown = {
            "content": self.content,
            "embed": self.embed.to_dict(),
            "components": self.view.to_components() if self.view is not None else [],
            "files": [(name, hashlib.sha256(data).hexdigest()) for name, data in self.files],
        }
        return hashlib.sha256(json.dumps(shown, sort_keys=True, default=str).encode()).hexdigest()

    def discord_files(self) -> list[discord.File]:
        return [discord.File(io.BytesIO(data), filename=name) for name, data in self.files]


Renderer = Callable[[JobService, Job, OutboxEntry, float], Awaitable[Rendered]]


async def render_status(service: JobService, job: Job, entry: OutboxEntry, now: float) -> Rendered:
    """The job's status embed; the Cancel button only while the job can still be cancelled."""
    queued = None
    if job.state == "queued":
        queued = next((place for place in await service.queue() if place.job.id == job.id), None)
    embed = status_embed(job, await service.last_progress(job.id), queued, now)
    return Rendered(embed=mark(embed, entry.nonce), view=None if job.is_terminal else cancel_view(job.id))


async def render_completion(service: JobService, job: Job, entry: OutboxEntry, now: float) -> Rendered:
    """A new message (edits do not notify) that mentions the owner, with the loss chart."""
    events = [stored.event for stored in await service.events(job.id)]
    done = next((event for event in reversed(events) if isinstance(event, Done)), None)
    embed = completion_embed(
        job, done.metrics if done else {}, adapter_name(job) if job.state == "succeeded" else None
    )
    files: tuple[tuple[str, bytes], ...] = ()
    png = loss_chart_png(*loss_points(events), f"job {job.id} · {job.name}")
    if png is not None:
        files = (("loss.png", png),)
        embed.set_image(url="attachment://loss.png")
    user_id = discord_user_id(job.owner)
    mention = f"<@{user_id}> " if user_id is not None else ""
    return Rendered(
        embed=mark(embed, entry.nonce),
        content=f"{mention}job {job.id} ({job.name}) {job.state}",
        view=resume_view(job),  # a cancelled job's owner can continue it from here
        files=files,
        mentions=MENTION_OWNER,
    )


RENDERERS: dict[str, Renderer] = {"status": render_status, "completion": render_completion}


# --- the marker

# Discord returns a create's nonce only in its response (and the gateway event), never in the channel
# history, so after the nonce window a message the bot posted but never recorded is recognised by what
# it shows: the entry's random nonce at the end of its embed footer. Only the bot writes its embeds, the
# footer is part of every rendering (edits keep it), and a random nonce cannot match a message of
# another entry, an earlier database or another bot.


def marker(nonce: str) -> str:
    return f"ref {nonce}"


def mark(embed: discord.Embed, nonce: str) -> discord.Embed:
    footer = embed.footer.text
    return embed.set_footer(text=f"{footer} · {marker(nonce)}" if footer else marker(nonce))


def carries_marker(message: discord.Message, nonce: str) -> bool:
    return any((embed.footer.text or "").endswith(marker(nonce)) for embed in message.embeds)


# --- /job


def delivery_problem(entry: OutboxEntry) -> str | None:
    """What went wrong delivering an entry, for people: None once it is delivered or never failed."""
    what = WHAT.get(entry.kind, f"a {entry.kind} message")
    action = "edit" if entry.posted and entry.kind == "status" else "post"
    if entry.state == "failed":
        return f"could not {action} {what}: {entry.error}"
    if entry.state == "pending" and entry.tries:
        tries = "1 try" if entry.tries == 1 else f"{entry.tries} tries"
        return f"still trying to {action} {what} ({tries} so far; last: {entry.error})"
    return None
