"""The discord.py client: receives its dependencies, registers cogs and the persistent Cancel button,
syncs commands, runs the outbox deliverer, and renders every user-facing error in one place."""

from __future__ import annotations

import logging
import secrets
from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.config import Config
from bot.discord_bot.cancel_button import CancelButton
from bot.discord_bot.command_sync import sync_commands_if_changed
from bot.discord_bot.deliverer import Deliverer
from bot.discord_bot.permissions import requester_for
from bot.discord_bot.resume_button import ResumeButton
from bot.discord_bot.shown_paths import without_data_dir
from bot.jobs.service import JobService
from bot.workers.serve_worker import ServeClient
from protocol.errors import UserError

log = logging.getLogger(__name__)


class QloraBot(commands.Bot):
    def __init__(
        self,
        *,
        config: Config,
        service: JobService,
        serve_client: ServeClient | None = None,
        hub_push_default: bool = False,
        **client_options: Any,
    ) -> None:
        # No privileged intents: interactions carry the member and their roles.
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=discord.Intents.default(),
            help_command=None,
            **client_options,
        )
        self.config = config
        self.service = service
        self.serve_client = serve_client  # None: /ask explains that serving is off
        self.hub_push_default = hub_push_default  # /finetune publishes by default when HF_TOKEN is set
        self.deliverer = Deliverer(self, service, config)  # everything the bot owes a channel
        self.tree.on_error = self.on_app_command_error

    async def setup_hook(self) -> None:
        from bot.discord_bot.cogs.ask import AskCog
        from bot.discord_bot.cogs.finetune import FinetuneCog
        from bot.discord_bot.cogs.hub import HubCog
        from bot.discord_bot.cogs.jobs import JobsCog

        self.add_dynamic_items(CancelButton, ResumeButton)
        await self.add_cog(FinetuneCog(self))
        await self.add_cog(JobsCog(self))
        await self.add_cog(AskCog(self))
        await self.add_cog(HubCog(self))
        await sync_commands_if_changed(
            self.tree, self.config.discord.guild_ids, self.config.data_dir() / "discord-commands.sha256"
        )
        self.deliverer.start()  # also what an earlier process left undelivered

    async def close(self) -> None:
        await self.deliverer.close()
        await super().close()

    async def press_cancel(self, interaction: discord.Interaction, job_id: int) -> None:
        """The Cancel button: only the job's owner or an admin; everyone else gets a private refusal."""
        try:
            job = await self.service.cancel(job_id, requester_for(interaction.user, self.config.discord))
        except UserError as error:  # a button is no command: its refusal is rendered as theirs are
            await self.on_app_command_error(interaction, error)
            return
        if job.is_terminal:
            await reply(interaction, f"Job {job_id} cancelled.")
        else:
            await reply(interaction, f"Cancelling job {job_id}: it saves a checkpoint, then stops.")

    async def press_resume(self, interaction: discord.Interaction, job_id: int) -> None:
        """The Resume button: a new job continues the cancelled one (its owner or an admin only)."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            job = await self.service.resume(
                job_id,
                requester_for(interaction.user, self.config.discord),
                idempotency_key=f"discord-interaction:{interaction.id}",
                guild_id=interaction.guild_id,
                channel_id=interaction.channel_id,
            )
        except UserError as error:
            await self.on_app_command_error(interaction, error)
            return
        # Its status message is owed by the job's creation (the outbox posts it).
        await reply(interaction, f"Resuming job {job_id} as job **{job.id}**: see its status message.")

    async def on_app_command_error(
        self, interaction: discord.Interaction, error: app_commands.AppCommandError | UserError
    ) -> None:
        """Every error of a command or a button, shown privately: a UserError as its message and hint
        (no path into the data directory: job folders, logs), anything else as a reference id."""
        original = getattr(error, "original", error)
        if isinstance(original, UserError):
            text = f"{original.message}. {original.hint}" if original.hint else original.message
            text = without_data_dir(text, self.config.data_dir())
        elif isinstance(error, app_commands.TransformerError):
            text = f"{error.value!r} is not a valid value for this option. {error}"
        else:
            reference = secrets.token_hex(4)
            log.error(
                "command %s failed (ref %s)",
                getattr(interaction.command, "name", "?"),
                reference,
                exc_info=original,
            )
            text = f"Something went wrong on our side (reference `{reference}`); admins can look it up."
        await reply(interaction, text)


async def reply(interaction: discord.Interaction, text: str) -> None:
    """An ephemeral answer, whether or not the interaction was already deferred."""
    if interaction.response.is_done():
        await interaction.followup.send(text, ephemeral=True)
    else:
        await interaction.response.send_message(text, ephemeral=True)
