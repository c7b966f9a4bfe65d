"""The Resume button on a cancelled job's completion message: its custom_id carries the job id, so it
keeps working after a restart. Pressing it (owner or admin) queues a new job that continues from the
cancelled job's newest checkpoint."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import discord

from bot.jobs.checkpoints import checkpoint_step, checkpoint_to_resume
from storage.models import Job

if TYPE_CHECKING:
    from bot.discord_bot.client import QloraBot


class ResumeButton(discord.ui.DynamicItem[discord.ui.Button], template=r"qlora:resume:(?P<job_id>[0-9]+)"):
    def __init__(self, job_id: int, label: str = "Resume") -> None:
        super().__init__(
            discord.ui.Button(
                label=label, style=discord.ButtonStyle.primary, custom_id=f"qlora:resume:{job_id}"
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> ResumeButton:
        return cls(int(match["job_id"]))

    async def callback(self, interaction: discord.Interaction[QloraBot]) -> None:
        await interaction.client.press_resume(interaction, self.job_id)


def resume_view(job: Job) -> discord.ui.View | None:
    """A Resume button when the job was cancelled with a checkpoint to continue from, else None."""
    if job.state != "cancelled":
        return None
    checkpoint = checkpoint_to_resume(job)
    if checkpoint is None:
        return None
    step = checkpoint_step(checkpoint)
    view = discord.ui.View(timeout=None)
    view.add_item(ResumeButton(job.id, f"Resume from step {step}" if step else "Resume"))
    return view
