"""Keep every job's status message current, and announce the end with a message that mentions its owner.

Edits go out with the bot token through the channel (interaction tokens die after 15 minutes), at most
as often as the EditBudget allows; each job has its own editor task that always sends the newest
state, so a rate-limited edit delays the display and never anything else. The final state is always
written. After a restart, resume() picks up the same status messages.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import discord

from bot.config import Config
from bot.discord_bot.cancel_button import cancel_view
from bot.discord_bot.edit_budget import EditBudget
from bot.discord_bot.permissions import discord_user_id
from bot.discord_bot.resume_button import resume_view
from bot.discord_bot.status_view import completion_embed, status_embed
from bot.jobs.outcomes import adapter_name
from bot.jobs.service import JobService
from bot.loss_chart import loss_chart_png, loss_points
from storage.models import Job
from trainer.protocol import Done, Progress

log = logging.getLogger(__name__)
ANNOUNCE_WITHIN_S = 7 * 24 * 3600  # after a long outage, older endings are not announced any more


@dataclass
class _Tracked:
    job: Job
    progress: Progress | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    final: bool = False


class StatusPublisher:
    def __init__(
        self,
        client: discord.Client,
        service: JobService,
        config: Config,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.service = service
        self.clock = clock
        discord_config = config.discord
        self.budget = EditBudget(
            discord_config.status_edit_interval_s,
            discord_config.old_status_edit_interval_s,
            discord_config.channel_edits_per_minute,
        )
        self._tasks: dict[int, asyncio.Task] = {}

    async def post_status(self, job: Job, channel_id: int) -> None:
        """Send the job's status message to the channel and keep it current from now on."""
        channel = self.client.get_partial_messageable(channel_id)
        message = await channel.send(embed=await self._embed(job, None), view=cancel_view(job.id))
        self.budget.record(channel_id, message.id, self.clock())  # sending counts as the first write
        await self.service.store.set_status_message(job.id, channel_id, message.id)
        self.follow(job.id)

    async def resume(self) -> None:
        """After a (re)start: follow running jobs' messages and announce endings missed while down."""
        for job in await self.service.list(states=["queued", "running"], limit=1000):
            if job.status_message_id is not None:
                self.follow(job.id)
        for job in await self.service.store.jobs_to_announce(since=self.clock() - ANNOUNCE_WITHIN_S):
            self.follow(job.id)

    def follow(self, job_id: int) -> None:
        if job_id not in self._tasks:
            task = asyncio.create_task(self._follow(job_id), name=f"status-{job_id}")
            self._tasks[job_id] = task
            task.add_done_callback(lambda _task: self._tasks.pop(job_id, None))

    async def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    # --- one job

    async def _follow(self, job_id: int) -> None:
        tracked = _Tracked(job=await self.service.get(job_id))
        editor = asyncio.create_task(self._editor(tracked), name=f"status-editor-{job_id}")
        try:
            async for update in self.service.subscribe(job_id):
                tracked.job = update.job
                if isinstance(update.event, Progress):
                    tracked.progress = update.event
                tracked.changed.set()
            if tracked.job.completion_message_id is None:
                await self._announce(tracked.job)
            tracked.final = True
            tracked.changed.set()
            await editor
        except Exception:
            log.exception("status updates of job %s failed", job_id)
            editor.cancel()

    async def _editor(self, tracked: _Tracked) -> None:
        job = tracked.job
        channel_id, message_id = job.channel_id, job.status_message_id
        if channel_id is None or message_id is None:
            return
        message = self.client.get_partial_messageable(channel_id).get_partial_message(message_id)
        created_at = discord.utils.snowflake_time(message_id).timestamp()
        while True:
            await tracked.changed.wait()
            now = self.clock()
            wait_s = self.budget.next_allowed(channel_id, message_id, created_at, now) - now
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            tracked.changed.clear()
            final = tracked.final
            self.budget.record(channel_id, message_id, self.clock())
            try:
                view = None if tracked.job.is_terminal else cancel_view(tracked.job.id)
                await message.edit(embed=await self._embed(tracked.job, tracked.progress), view=view)
            except discord.HTTPException as error:
                log.warning("editing the status of job %s failed (%s); retrying", tracked.job.id, error)
                tracked.changed.set()
                continue
            if final:
                return

    async def _embed(self, job: Job, progress: Progress | None) -> discord.Embed:
        queued = None
        if job.state == "queued":
            queued = next((entry for entry in await self.service.queue() if entry.job.id == job.id), None)
        return status_embed(job, progress, queued, self.clock())

    async def _announce(self, job: Job) -> None:
        """A new message (edits do not notify) that mentions the owner, with the loss chart."""
        if job.channel_id is None:
            return
        events = [stored.event for stored in await self.service.events(job.id)]
        done = next((event for event in reversed(events) if isinstance(event, Done)), None)
        train, evals = loss_points(events)
        embed = completion_embed(
            job, done.metrics if done else {}, adapter_name(job) if job.state == "succeeded" else None
        )
        files = []
        png = loss_chart_png(train, evals, f"job {job.id} · {job.name}")
        if png is not None:
            files.append(discord.File(io.BytesIO(png), filename="loss.png"))
            embed.set_image(url="attachment://loss.png")
        user_id = discord_user_id(job.owner)
        mention = f"<@{user_id}> " if user_id is not None else ""
        channel = self.client.get_partial_messageable(job.channel_id)
        view = resume_view(job)
        message = await channel.send(
            f"{mention}job {job.id} ({job.name}) {job.state}",
            embed=embed,
            files=files,
            allowed_mentions=discord.AllowedMentions(users=True, roles=False, everyone=False),
            **({"view": view} if view is not None else {}),
        )
        await self.service.store.set_completion_message(job.id, message.id)
