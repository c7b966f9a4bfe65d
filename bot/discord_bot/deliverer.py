"""The deliverer: sends what the outbox says the bot owes each channel (status messages and their edits,
completion pings), with backoff, exactly once, across restarts; it gives up only on a permanent error.

It runs beside the job path, never on it: a job change only writes an outbox row (storage/outbox.py).
discord.py waits silently on an empty rate-limit bucket and retries 5xx for seconds, so every send and
edit is awaited here, one lane per channel: a slow or failing channel holds up nothing but itself.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable

import discord

from bot.config import Config
from bot.discord_bot.delivery_errors import backoff_s, judge
from bot.discord_bot.edit_budget import EditBudget
from bot.discord_bot.owed_messages import RENDERERS, WHAT, Renderer, carries_marker
from bot.jobs.service import JobService
from storage.models import EDITED_KINDS, Job, OutboxEntry

log = logging.getLogger(__name__)
# Our clock and Discord's may disagree; the history search starts this much before the first send (the
# marker, not the time, decides which message is ours, so a wide window costs nothing but a page).
HISTORY_SLACK_S = 300.0


class Deliverer:
    def __init__(
        self,
        client: discord.Client,
        service: JobService,
        config: Config,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.service = service
        self.outbox = service.store.outbox
        self.settings = config.discord
        self.clock = clock
        self.budget = EditBudget(
            self.settings.status_edit_interval_s,
            self.settings.old_status_edit_interval_s,
            self.settings.channel_edits_per_minute,
        )
        self._task: asyncio.Task | None = None
        self._lanes: dict[int, asyncio.Task] = {}  # channel id -> the task sending its due entries
        # In memory, like the edit budget they come from: an edit waits for its message's next slot ...
        self._held: dict[int, float] = {}  # entry id -> not before
        # ... and a channel whose last try failed waits out that try's backoff as a whole.
        self._paused: dict[int, float] = {}  # channel id -> not before

    def start(self) -> None:
        """Deliver what is due now (pending rows survive restarts) and whatever comes due later."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="outbox-deliverer")

    async def close(self) -> None:
        # A send cut short here may still reach Discord: its entry says so (first_sent_at), and the next
        # start finds the message instead of posting it again.
        tasks = [task for task in (self._task, *self._lanes.values()) if task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None

    # --- scheduling

    async def _run(self) -> None:
        while True:
            try:
                wake_at = await self._dispatch()
            except Exception:
                log.exception("reading the outbox failed; trying again")
                wake_at = self.clock() + self.settings.outbox_poll_s
            # Woken early by this process's own writes; the poll is for rows other processes wrote.
            await self.outbox.wait(max(wake_at - self.clock(), 0.0))

    async def _dispatch(self) -> float:
        """Hand due entries to their channels' lanes; returns when to look again."""
        now = self.clock()
        wake_at = now + self.settings.outbox_poll_s
        batches: dict[int, list[OutboxEntry]] = {}
        for entry in await self.outbox.due(now):
            hold = max(self._held.get(entry.id, 0.0), self._paused.get(entry.channel_id, 0.0))
            if hold > now:
                wake_at = min(wake_at, hold)
            elif entry.channel_id not in self._lanes:  # a busy lane wakes us when it is done
                batches.setdefault(entry.channel_id, []).append(entry)
        for channel_id, batch in batches.items():
            task = asyncio.create_task(self._lane(batch), name=f"outbox-channel-{channel_id}")
            self._lanes[channel_id] = task
            task.add_done_callback(lambda _task, channel_id=channel_id: self._lane_done(channel_id))
        later = await self.outbox.next_due_at(now)
        return wake_at if later is None else min(wake_at, later)

    def _lane_done(self, channel_id: int) -> None:
        self._lanes.pop(channel_id, None)
        self.outbox.wake()  # what came due in this channel while the lane was busy

    async def _lane(self, batch: list[OutboxEntry]) -> None:
        """A channel's due entries in order; a try that failed for a passing reason stops the lane (the
        channel is likely failing for all of them) until its backoff is over."""
        for entry in batch:
            try:
                if not await self._attempt(entry):
                    return
            except Exception:  # the store itself failed: do not spin on it
                log.exception("job %s: recording the delivery of %s failed", entry.job_id, _what(entry))
                self._paused[entry.channel_id] = self.clock() + self.settings.outbox_poll_s
                return

    async def _attempt(self, entry: OutboxEntry) -> bool:
        """One try at an entry; False if it failed and will be tried again."""
        try:
            await self._deliver(entry)
            return True
        except Exception as error:  # a cancel (BaseException) is not a failure: it passes
            verdict, failure = judge(error), error
        if verdict.permanent:
            log.warning(
                "job %s: gave up on %s in channel %s: Discord said %s",
                entry.job_id,
                _what(entry),
                entry.channel_id,
                verdict.reason,
            )
            await self.outbox.mark_failed(entry, error=verdict.reason, code=verdict.code)
            return True
        tries = entry.tries + 1
        base, most = self.settings.outbox_backoff_s, self.settings.outbox_max_backoff_s
        delay = backoff_s(tries, base, most, verdict.retry_after)
        if verdict.bad_token:
            log.error(
                "Discord refused the bot token (%s): check DISCORD_TOKEN; messages wait", verdict.reason
            )
        log.warning(
            "job %s: %s not delivered (%s); try %d in %.1f s",
            entry.job_id,
            _what(entry),
            verdict.reason,
            tries + 1,
            delay,
            exc_info=failure if verdict.internal else None,
        )
        now = self.clock()
        await self.outbox.mark_retry(entry, at=now + delay, error=verdict.reason)
        self._paused[entry.channel_id] = now + delay
        return False

    # --- one entry

    async def _deliver(self, entry: OutboxEntry) -> None:
        job = await self.service.store.get_job(entry.job_id)
        render = RENDERERS.get(entry.kind)
        if job is None or render is None:  # e.g. a kind written by a newer version of the bot
            await self.outbox.mark_failed(entry, error=f"cannot render a {entry.kind} message", code=None)
            return
        if entry.posted and entry.kind in EDITED_KINDS:
            await self._edit(entry, job, render)
        elif not entry.posted:
            await self._post(entry, job, render)

    async def _post(self, entry: OutboxEntry, job: Job, render: Renderer) -> None:
        """Create the message once: the same nonce on every try, and after the nonce window a look at
        the channel's history first, so a message that reached Discord is never posted twice."""
        channel = self.client.get_partial_messageable(entry.channel_id)
        message = await self._find_posted(channel, entry)
        edited = entry.kind in EDITED_KINDS
        # What the message shows, for an edited kind: only a first try surely shows this rendering (a
        # re-sent nonce returns the message an earlier try made), else revision 0, so it is edited next.
        revision, content_hash = 0, None
        if message is None:
            rendered = await render(self.service, job, entry, self.clock())
            if entry.first_sent_at is None:
                await self.outbox.mark_sending(entry)  # committed before Discord can have the message
                revision, content_hash = entry.revision, rendered.digest
            message = await channel.send(
                rendered.content,
                embed=rendered.embed,
                view=rendered.view,
                files=rendered.discord_files(),
                nonce=entry.nonce,  # discord.py sets enforce_nonce: a repeat returns the first message
                allowed_mentions=rendered.mentions,
            )
        if edited:
            self.budget.record(entry.channel_id, message.id, self.clock())  # sending counts as a write
        else:
            revision, content_hash = entry.revision, None  # posted once: delivered whatever it shows
        await self.outbox.mark_posted(entry, message.id, revision=revision, content_hash=content_hash)
        if entry.tries:
            log.info("job %s: %s posted after %d failed tries", entry.job_id, _what(entry), entry.tries)

    async def _find_posted(
        self, channel: discord.PartialMessageable, entry: OutboxEntry
    ) -> discord.Message | None:
        if entry.first_sent_at is None:
            return None  # never handed to Discord
        if self.clock() - entry.first_sent_at <= self.settings.outbox_nonce_window_s:
            return None  # within the window a re-send with the same nonce returns the message itself
        since = datetime.datetime.fromtimestamp(entry.first_sent_at - HISTORY_SLACK_S, datetime.UTC)
        me = self.client.user.id if self.client.user is not None else None
        after = discord.Object(discord.utils.time_snowflake(since))
        try:
            async for message in channel.history(limit=self.settings.outbox_history_limit, after=after):
                if message.author.id == me and carries_marker(message, entry.nonce):
                    log.info(
                        "job %s: %s was already posted (message %s)", entry.job_id, _what(entry), message.id
                    )
                    return message
        except discord.Forbidden as error:
            # Without Read Message History we cannot know: a possible second copy beats a lost ping
            # (and if the channel itself is gone, the send says so and gives up).
            log.warning(
                "job %s: cannot search channel %s (%s); posting", entry.job_id, entry.channel_id, error.text
            )
        return None

    async def _edit(self, entry: OutboxEntry, job: Job, render: Renderer) -> None:
        """Write the newest state over the message, when the edit budget allows and if it differs from
        what the message shows."""
        assert entry.message_id is not None
        now = self.clock()
        created_at = discord.utils.snowflake_time(entry.message_id).timestamp()
        allowed = self.budget.next_allowed(entry.channel_id, entry.message_id, created_at, now)
        if allowed > now:
            self._held[entry.id] = allowed
            return
        self._held.pop(entry.id, None)
        rendered = await render(self.service, job, entry, now)
        if rendered.digest != entry.delivered_hash:
            self.budget.record(entry.channel_id, entry.message_id, self.clock())
            message = self.client.get_partial_messageable(entry.channel_id).get_partial_message(
                entry.message_id
            )
            await message.edit(embed=rendered.embed, view=rendered.view)
        await self.outbox.mark_edited(entry, revision=entry.revision, content_hash=rendered.digest)


def _what(entry: OutboxEntry) -> str:
    return WHAT.get(entry.kind, f"a {entry.kind} message")
