"""/finetune: check the person's role, queue the job the options ask for (the service checks them; the job
owes its channel a status message)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.permissions import requester_for, require_role
from bot.discord_bot.shown_paths import without_paths
from bot.jobs.requests import Attachment, JobRequest
from protocol.job_spec import DATASET_FORMATS

if TYPE_CHECKING:
    from bot.discord_bot.client import QloraBot

# What each option means, as Discord shows it beside the option.
DESCRIPTIONS = {
    "base_model": "Base model to fine-tune (from the allowed list)",
    "dataset": "Hugging Face dataset id (owner/name) or an https:// URL of a data file",
    "file": "A data file: .jsonl, .json, .csv, .parquet or .txt",
    "name": "Adapter name (default: from the dataset)",
    "r": "LoRA rank",
    "alpha": "LoRA alpha (default: 2 x rank)",
    "dropout": "LoRA dropout",
    "epochs": "Passes over the dataset",
    "max_steps": "Optimizer steps (overrides epochs)",
    "lr": "Peak learning rate",
    "max_length": "Tokens per packed row",
    "format": "Dataset format (default: detected from the columns)",
    "eval_fraction": "Share of the examples held out for eval loss",
    "push": "Publish the adapter to the Hugging Face Hub when done",
    "private": "Make the Hub repo private (default: hub.private in config.toml, normally yes)",
}


class FinetuneCog(commands.Cog):
    def __init__(self, bot: QloraBot) -> None:
        self.bot = bot

    @app_commands.command(name="finetune", description="Fine-tune a base model with QLoRA on a dataset")
    @app_commands.describe(**DESCRIPTIONS)
    @app_commands.choices(format=[app_commands.Choice(name=name, value=name) for name in DATASET_FORMATS])
    async def finetune(
        self,
        interaction: discord.Interaction,
        base_model: str,
        dataset: str | None = None,
        file: discord.Attachment | None = None,
        name: str | None = None,
        r: app_commands.Range[int, 1, 1024] | None = None,
        alpha: app_commands.Range[int, 1, 4096] | None = None,
        dropout: app_commands.Range[float, 0.0, 0.9] | None = None,
        epochs: app_commands.Range[float, 0.01, 1000.0] | None = None,
        max_steps: app_commands.Range[int, 1, 10_000_000] | None = None,
        lr: app_commands.Range[float, 1e-7, 1.0] | None = None,
        max_length: app_commands.Range[int, 16, 1_000_000] | None = None,
        format: str = "auto",
        eval_fraction: app_commands.Range[float, 0.0, 0.5] | None = None,
        push: bool | None = None,
        private: bool | None = None,
    ) -> None:
        config = self.bot.config
        require_role(interaction.user, config.discord.finetune_roles, config.discord, "/finetune")
        requester = requester_for(interaction.user, config.discord)
        await interaction.response.defer(ephemeral=True, thinking=True)
        request = JobRequest(
            base_model=base_model,
            dataset=dataset,
            file=Attachment(file.filename, file.size, file.read) if file is not None else None,
            format=format,
            name=name,
            lora={"r": r, "alpha": alpha, "dropout": dropout},
            training={
                "epochs": epochs,
                "max_steps": max_steps,
                "learning_rate": lr,
                "max_length": max_length,
                "eval_fraction": eval_fraction,
            },
        )
        # The job's status message is owed in the same transaction that creates the job; that write wakes
        # the deliverer, so the message appears at once (and after a restart, if Discord is down now).
        job = await self.bot.service.submit_request(
            request,
            requester,
            idempotency_key=f"discord-interaction:{interaction.id}",
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            push=self.bot.hub_push_default if push is None else push,
            private=config.hub.private if private is None else private,
        )
        base = without_paths(job.spec.base_model)  # a local base model by its folder's name
        await interaction.followup.send(
            f"Queued job **{job.id}** (`{job.name}` on `{base}`): see its status message.", ephemeral=True
        )

    @finetune.autocomplete("base_model")
    async def base_model_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        allowed = self.bot.config.limits.base_models
        matches = [model for model in allowed if current.lower() in model.lower()]
        return [app_commands.Choice(name=model[:100], value=model) for model in matches[:25]]
