"""/finetune: check the person and the options, queue the job (which owes its channel a status message)."""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.permissions import requester_for, require_role
from bot.discord_bot.shown_paths import without_paths
from bot.job_specs import clean_name, make_spec, name_from_dataset
from bot.jobs.submission import Upload
from protocol.errors import UserError
from protocol.job_spec import DATASET_FORMATS, DatasetKind, DatasetSpec
from protocol.sources import hub_id_problem

if TYPE_CHECKING:
    from bot.discord_bot.client import QloraBot

UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".txt")
MIB = 1024 * 1024
NOT_A_SOURCE_HINT = (
    "from Discord a dataset is a Hub id (e.g. mlabonne/guanaco-llama2-1k), the https:// URL of a data file, "
    "or a file attached with the file option; files on the bot's machine are never read"
)


class FinetuneCog(commands.Cog):
    def __init__(self, bot: QloraBot) -> None:
        self.bot = bot

    @app_commands.command(name="finetune", description="Fine-tune a base model with QLoRA on a dataset")
    @app_commands.describe(
        base_model="Base model to fine-tune (from the allowed list)",
        dataset="Hugging Face dataset id (owner/name) or an https:// URL of a data file",
        file="A data file: .jsonl, .json, .csv, .parquet or .txt",
        name="Adapter name (default: from the dataset)",
        r="LoRA rank",
        alpha="LoRA alpha (default: 2 x rank)",
        dropout="LoRA dropout",
        epochs="Passes over the dataset",
        max_steps="Optimizer steps (overrides epochs)",
        lr="Peak learning rate",
        max_length="Tokens per packed row",
        format="Dataset format (default: detected from the columns)",
        eval_fraction="Share of the examples held out for eval loss",
        push="Publish the adapter to the Hugging Face Hub when done",
        private="Make the Hub repo private (default: hub.private in config.toml, normally yes)",
    )
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
        self._check_base_model(base_model, requester.is_admin)
        self._check_limits(r=r, epochs=epochs, max_steps=max_steps, max_length=max_length)
        source, kind, upload = await self._dataset(dataset, file)
        spec = make_spec(
            config.defaults,
            base_model=base_model,
            dataset=DatasetSpec(source=source, format=format, kind=kind),  # type: ignore[arg-type]
            name=clean_name(name) if name else name_from_dataset(file.filename if file else source),
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
        job = await self.bot.service.submit(
            spec,
            requester,
            idempotency_key=f"discord-interaction:{interaction.id}",
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            upload=upload,
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

    def _check_base_model(self, base_model: str, is_admin: bool) -> None:
        allowed = self.bot.config.limits.base_models
        if base_model not in allowed and not is_admin:
            raise UserError(
                f"base model {base_model} is not on the allowed list (limits.base_models)",
                f"choose one of: {', '.join(allowed)}" if allowed else "ask an admin to allow a base model",
            )

    def _check_limits(self, **values: float | None) -> None:
        limits = self.bot.config.limits
        caps = {  # option -> (its setting in config.toml, the cap)
            "r": ("max_r", limits.max_r),
            "epochs": ("max_epochs", limits.max_epochs),
            "max_steps": ("max_steps", limits.max_steps),
            "max_length": ("max_length", limits.max_length),
        }
        for option, value in values.items():
            setting, cap = caps[option]
            if value is not None and value > cap:
                raise UserError(
                    f"{option}={value:g} is above this server's limit of {cap:g} (limits.{setting})",
                    f"use {option} {cap:g} or less",
                )

    async def _dataset(
        self, dataset: str | None, file: discord.Attachment | None
    ) -> tuple[str, DatasetKind, Upload | None]:
        """The source and its kind: never "file", which only the CLI may name (DESIGN.md, Security)."""
        if (dataset is None) == (file is None):
            raise UserError(
                "give either dataset or file, not both or neither",
                "dataset: a Hub id or https URL; file: an upload",
            )
        if file is None:
            assert dataset is not None
            source = dataset.strip()
            if source.startswith("https://"):
                return source, "url", None
            # The same answer whatever exists on the bot's machine: the text alone decides.
            if hub_id_problem(source, owner_required=True) is not None:
                raise UserError(
                    f"dataset {source!r} is neither a Hub dataset id (owner/name) nor an https:// URL",
                    NOT_A_SOURCE_HINT,
                )
            if PurePosixPath(source).suffix.lower() in UPLOAD_SUFFIXES:
                raise UserError(
                    f"dataset {source!r} looks like a file name, not a Hub dataset id (owner/name)",
                    NOT_A_SOURCE_HINT,
                )
            return source, "hub", None
        suffix = PurePosixPath(file.filename).suffix.lower()
        if suffix not in UPLOAD_SUFFIXES:
            raise UserError(
                f"{file.filename}: unsupported file type {suffix or '(none)'}",
                f"attach one of {', '.join(UPLOAD_SUFFIXES)}",
            )
        cap = self.bot.config.limits.max_attachment_mb
        if file.size > cap * MIB:
            raise UserError(
                f"{file.filename} is {file.size / MIB:.1f} MiB, "
                f"above the {cap:g} MiB limit (limits.max_attachment_mb)",
                "use a smaller file, or publish the dataset on the Hub and pass its id",
            )
        data = await file.read()
        if len(data) > cap * MIB:  # the size Discord reported is not a promise
            raise UserError(f"{file.filename} is above the {cap:g} MiB limit", "use a smaller file")
        return f"upload{suffix}", "upload", Upload(suffix=suffix, data=data, filename=file.filename)
