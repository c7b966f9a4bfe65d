"""/push: publish a finished adapter to the Hugging Face Hub, or retry a publish that failed."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.permissions import requester_for

if TYPE_CHECKING:
    from bot.discord_bot.client import QloraBot


class HubCog(commands.Cog):
    def __init__(self, bot: QloraBot) -> None:
        self.bot = bot

    @app_commands.command(name="push", description="Publish a finished adapter to the Hugging Face Hub")
    @app_commands.describe(
        id="The job whose adapter to publish",
        repo="Hub repo as namespace/name in the bot's namespace (default: the adapter's name there)",
        public="Make the repo public (default: as the job asked, private unless told otherwise)",
    )
    async def push(
        self, interaction: discord.Interaction, id: int, repo: str | None = None, public: bool | None = None
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        requester = requester_for(interaction.user, self.bot.config.discord)
        private = None if public is None else not public
        job = await self.bot.service.publish(id, requester, repo=repo, private=private)
        if job.hub_state == "pushed":
            text = f"Job {id} is published: {job.hub_url}"
        else:
            text = f"Publishing job {id} failed: {job.hub_error}. The adapter is safe; try `/push` again."
        await interaction.followup.send(text, ephemeral=True)
