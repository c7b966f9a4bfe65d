"""/ask: stream an adapter's answer into the reply, optionally beside the base model's answer."""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.discord_bot.permissions import requester_for, require_role
from bot.discord_bot.shown_paths import without_paths
from bot.jobs.asking import Question
from bot.workers.serve_worker import Waiting
from protocol.errors import UserError
from protocol.serve import Failed, Finished, Loading

if TYPE_CHECKING:
    from bot.discord_bot.client import QloraBot

MESSAGE_LIMIT = 2000
EMBED_LIMIT = 4096
FIELD_LIMIT = 1024


class AskCog(commands.Cog):
    def __init__(self, bot: QloraBot) -> None:
        self.bot = bot

    @app_commands.command(
        name="ask", description="Ask a fine-tuned adapter; compare shows the base model's answer too"
    )
    @app_commands.describe(
        prompt="Your question or instruction",
        adapter="A finished adapter (newest first), or a Hub adapter id (owner/name)",
        compare="Also answer with the base model alone, side by side",
        max_new_tokens="Longest answer, in tokens",
        temperature="0 answers greedily; higher is more varied",
    )
    async def ask(
        self,
        interaction: discord.Interaction,
        prompt: str,
        adapter: str,
        compare: bool = False,
        max_new_tokens: app_commands.Range[int, 1, 100_000] | None = None,
        temperature: app_commands.Range[float, 0.0, 2.0] = 0.0,
    ) -> None:
        config = self.bot.config
        require_role(interaction.user, config.discord.ask_roles, config.discord, "/ask")
        if self.bot.serve_client is None:
            raise UserError("this bot does not serve adapters", "ask an admin to enable serving")
        requester = requester_for(interaction.user, config.discord)
        await interaction.response.defer(thinking=True)
        # From Discord the service takes adapter names and Hub ids only, of the base models /finetune allows
        # (admins: any).
        question = Question(
            prompt, adapter, compare=compare, max_new_tokens=max_new_tokens, temperature=temperature
        )
        answering = await self.bot.service.ask(question, requester, self.bot.serve_client)
        resolved, answers = answering.adapter, answering.texts
        last_edit = 0.0
        async for event in answering.events():
            status = None
            if isinstance(event, Waiting):
                status = f"⏳ waiting: {event.reason}"
            elif isinstance(event, Loading):
                status = f"⏳ loading the {event.what.replace('_', ' ')}…"
            elif isinstance(event, Failed):
                hint = f" ({event.hint})" if event.hint else ""
                failure = without_paths(f"❌ {event.kind}: {event.message}{hint}")
                await interaction.edit_original_response(content=failure)
                return
            now = time.monotonic()
            if now - last_edit >= config.serve.stream_edit_interval_s:
                last_edit = now
                await interaction.edit_original_response(
                    content=status or _partial(resolved.label, answers, compare)
                )
        base_model = without_paths(resolved.base_model)
        await self._final(interaction, resolved.label, base_model, answers, answering.finished, compare)

    @ask.autocomplete("adapter")
    async def adapter_choices(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        adapters = await self.bot.service.adapters(limit=100)  # newest first
        matches = [adapter for adapter in adapters if current.lower() in adapter.name.lower()]
        return [
            app_commands.Choice(name=f"{a.name} ({without_paths(a.base_model)})"[:100], value=a.name)
            for a in matches[:25]
        ]

    async def _final(
        self,
        interaction: discord.Interaction,
        label: str,
        base_model: str,
        answers: dict[str, str],
        finished: dict[str, Finished],
        compare: bool,
    ) -> None:
        def speed(variant: str) -> str:
            result = finished.get(variant)
            return f"{result.tokens_per_s:.1f} tokens/s" if result else "?"

        if not compare:
            text = answers["adapter"] or "(empty answer)"
            if len(text) <= MESSAGE_LIMIT:
                await interaction.edit_original_response(content=text)
            elif len(text) <= EMBED_LIMIT:
                embed = discord.Embed(title=label, description=text).set_footer(text=speed("adapter"))
                await interaction.edit_original_response(content=None, embed=embed)
            else:
                await interaction.edit_original_response(
                    content=f"`{label}` answered {len(text):,} characters, see the file ({speed('adapter')})",
                    attachments=[discord.File(io.BytesIO(text.encode()), filename="answer.txt")],
                )
            return
        if max(len(answers["base"]), len(answers["adapter"])) <= FIELD_LIMIT:
            embed = discord.Embed(title=f"{label} vs its base model")
            embed.add_field(
                name=f"Base: {base_model} · {speed('base')}"[:256], value=answers["base"] or "(empty)"
            )
            embed.add_field(
                name=f"Adapter: {label} · {speed('adapter')}"[:256], value=answers["adapter"] or "(empty)"
            )
            await interaction.edit_original_response(content=None, embed=embed)
            return
        both = (
            f"=== base model {base_model} ===\n{answers['base']}\n\n"
            f"=== adapter {label} ===\n{answers['adapter']}\n"
        )
        await interaction.edit_original_response(
            content=f"Base {speed('base')} · adapter {speed('adapter')}: the answers are long, see the file.",
            attachments=[discord.File(io.BytesIO(both.encode()), filename="compare.txt")],
        )


def _partial(label: str, answers: dict[str, str], compare: bool) -> str:
    """The answer so far, trimmed from the front to fit one message while it streams."""
    text = answers["adapter"] + "▌"
    if compare:
        text = f"**base**: {answers['base']}\n\n**{label}**: {text}"
    return text if len(text) <= MESSAGE_LIMIT else "…" + text[-(MESSAGE_LIMIT - 1) :]
