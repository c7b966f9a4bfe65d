"""/jobs, /job, /cancel, /queue and /adapters: the job store seen from Discord."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.owed_messages import delivery_problem
from bot.discord_bot.permissions import discord_user_id, requester_for
from bot.discord_bot.shown_paths import without_paths
from bot.discord_bot.status_view import COLOURS, ending, hub_line, what_to_do
from bot.hub.public_record import public_reference
from bot.jobs.summaries import starts_in, step_and_loss
from storage.models import JOB_STATES, Job

if TYPE_CHECKING:
    from bot.discord_bot.client import QloraBot

LIST_LIMIT = 20


class JobsCog(commands.Cog):
    def __init__(self, bot: QloraBot) -> None:
        self.bot = bot

    @app_commands.command(name="jobs", description="List fine-tuning jobs")
    @app_commands.describe(scope="Your jobs or everyone's", state="Only jobs in this state")
    @app_commands.choices(
        scope=[app_commands.Choice(name="mine", value="mine"), app_commands.Choice(name="all", value="all")],
        state=[app_commands.Choice(name=state, value=state) for state in JOB_STATES],
    )
    async def jobs(
        self, interaction: discord.Interaction, scope: str = "mine", state: str | None = None
    ) -> None:
        await interaction.response.defer(ephemeral=True)
        owner = None if scope == "all" else requester_for(interaction.user, self.bot.config.discord).owner
        jobs = await self.bot.service.list(owner=owner, states=[state] if state else None, limit=LIST_LIMIT)
        if not jobs:
            await interaction.followup.send("No jobs found.", ephemeral=True)
            return
        lines = [await self._line(job) for job in jobs]
        embed = discord.Embed(title="Jobs" if scope == "all" else "Your jobs", description="\n".join(lines))
        await interaction.followup.send(embed=embed, ephemeral=True)

    @app_commands.command(name="job", description="Show one job: settings, progress and (yours) its log")
    async def job(self, interaction: discord.Interaction, id: int) -> None:
        await interaction.response.defer(ephemeral=True)
        report = await self.bot.service.report(id)
        job, progress = report.job, report.progress
        requester = requester_for(interaction.user, self.bot.config.discord)
        embed = discord.Embed(title=f"Job {job.id} · {job.name}", colour=COLOURS[job.state])
        embed.add_field(name="State", value=f"{job.state}{f' ({job.phase})' if job.phase else ''}")
        embed.add_field(name="Owner", value=_owner(job))
        embed.add_field(name="Attempt", value=str(job.attempt))
        embed.add_field(name="Base model", value=without_paths(job.spec.base_model), inline=False)
        dataset = job.spec.dataset
        embed.add_field(name="Dataset", value=dataset.label or public_reference(dataset.source))
        lora = job.spec.lora
        embed.add_field(name="LoRA", value=f"r={lora.r}, alpha={lora.resolved_alpha}, dropout={lora.dropout}")
        if progress is not None:
            embed.add_field(name="Progress", value=step_and_loss(progress), inline=False)
        if job.error_message:
            advice = what_to_do(job)
            hint = f"\n{advice}" if advice else ""
            name = "Ended" if job.state == "cancelled" else "Error"
            text = ending(job) if job.state == "cancelled" else f"{job.error_kind}: {ending(job)}"
            embed.add_field(name=name, value=_clip(text + hint, 1024), inline=False)
        hub = hub_line(job)
        if hub:
            embed.add_field(name="Hugging Face Hub", value=_clip(hub, 1024), inline=False)
        # What the bot owes the job's channel and could not (yet) deliver, in Discord's words.
        problems = [delivery_problem(entry) for entry in report.owed]
        if any(problems):
            text = "\n".join(problem for problem in problems if problem)
            embed.add_field(name="Discord", value=_clip(text, 1024), inline=False)
        if requester.owner == job.owner or requester.is_admin:
            tail = without_paths(report.log_tail, job.folder)
            if tail:
                embed.description = f"Log (last lines):\n```\n{_clip(tail, 3900)}\n```"
        await interaction.followup.send(embed=embed, ephemeral=True)

    @app_commands.command(name="cancel", description="Cancel a job (a running job saves a checkpoint first)")
    async def cancel(self, interaction: discord.Interaction, id: int) -> None:
        await interaction.response.defer(ephemeral=True)
        job = await self.bot.service.cancel(id, requester_for(interaction.user, self.bot.config.discord))
        text = (
            f"Job {id} cancelled."
            if job.is_terminal
            else f"Cancelling job {id}: it saves a checkpoint, then stops."
        )
        await interaction.followup.send(text, ephemeral=True)

    @app_commands.command(name="queue", description="Waiting jobs, their positions and expected start")
    async def queue(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        entries = await self.bot.service.queue()
        running = await self.bot.service.list(states=["running"], limit=LIST_LIMIT)
        lines = [f"▶ job {job.id} `{job.name}` ({_owner(job)}): {job.phase or 'starting'}" for job in running]
        lines += [
            f"#{entry.position} job {entry.job.id} `{entry.job.name}` ({_owner(entry.job)}): "
            f"{starts_in(entry.eta_s)}"
            for entry in entries
        ]
        embed = discord.Embed(title="Queue", description="\n".join(lines) or "Nothing running or waiting.")
        await interaction.followup.send(embed=embed, ephemeral=True)

    @app_commands.command(name="adapters", description="Finished adapters you can /ask, newest first")
    async def adapters(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True)
        lines = []
        for listed in await self.bot.service.finished_adapters(limit=LIST_LIMIT):
            adapter = listed.adapter
            hub = f" · {listed.hub_url}" if listed.hub_url else ""
            base = without_paths(adapter.base_model)
            lines.append(f"`{adapter.name}` on `{base}` (job {adapter.job_id}){hub}")
        embed = discord.Embed(title="Adapters", description="\n".join(lines) or "No finished adapters yet.")
        await interaction.followup.send(embed=embed, ephemeral=True)

    async def _line(self, job: Job) -> str:
        progress = await self.bot.service.last_progress(job.id)
        detail = ""
        if progress is not None and job.state == "running":
            detail = f" {step_and_loss(progress)}"
        return f"**{job.id}** `{job.name}` {job.state}{detail} ({_owner(job)})"


def _owner(job: Job) -> str:
    user_id = discord_user_id(job.owner)
    return f"<@{user_id}>" if user_id is not None else job.owner


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]
