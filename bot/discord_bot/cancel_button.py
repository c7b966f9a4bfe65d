"""The persistent Cancel button of a status message: its custom_id carries the job id.

A DynamicItem is matched by its custom_id pattern, so buttons on messages sent before a restart keep
working (registered in setup_hook, no per-message view to restore).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord

if TYPE_CHECKING:
    from bot.discord_bot.client import QloraBot


class CancelButton(discord.ui.DynamicItem[discord.ui.Button], template=r"qlora:cancel:(?P<job_id>[0-9]+)"):
    def __init__(self, job_id: int) -> None:
        super().__init__(
            discord.ui.Button(
                label="Cancel", style=discord.ButtonStyle.danger, custom_id=f"qlora:cancel:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> CancelButton:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction[QloraBot]) -> None:
        await interaction.client.press_cancel(interaction, self.job_id)


def cancel_view(job_id: int) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id))
    return view
