"""What a job looks like in Discord: the status embed that is edited in place, and the completion embed."""

from __future__ import annotations

import time

import discord

from bot.discord_bot.permissions import discord_user_id
from bot.discord_bot.shown_paths import without_paths
from bot.jobs.checkpoints import checkpoint_step, checkpoint_to_resume
from bot.jobs.scheduler import QueueEntry
from bot.jobs.summaries import format_duration, phase_in_sentence, starts_in
from protocol.events import Progress
from storage.models import Job

COLOURS = {
    "queued": discord.Colour.light_grey(),
    "running": discord.Colour.blurple(),
    "succeeded": discord.Colour.green(),
    "failed": discord.Colour.red(),
    "cancelled": discord.Colour.dark_grey(),
}
BAR_WIDTH = 20


def progress_bar(step: int, total: int) -> str:
    filled = round(BAR_WIDTH * step / total) if total else 0
    return "█" * filled + "░" * (BAR_WIDTH - filled) + f" {100 * step // total if total else 0}%"


def status_embed(
    job: Job, progress: Progress | None, queued: QueueEntry | None, now: float | None = None
) -> discord.Embed:
    now = time.time() if now is None else now
    embed = discord.Embed(title=f"Job {job.id} · {job.name}", colour=COLOURS[job.state])
    state = job.state if job.state != "running" else f"running: {phase_in_sentence(job.phase)}"
    if job.attempt > 1 and not job.is_terminal:
        state += f" (attempt {job.attempt})"
    embed.add_field(name="State", value=state, inline=False)
    if job.state == "queued" and queued is not None:
        embed.add_field(name="Queue", value=f"#{queued.position}, {starts_in(queued.eta_s)}")
    if progress is not None:
        embed.add_field(
            name="Progress", value=progress_bar(progress.step, progress.total_steps), inline=False
        )
        embed.add_field(name="Step", value=f"{progress.step}/{progress.total_steps}")
        embed.add_field(name="Epoch", value=f"{progress.epoch:.2f}")
        embed.add_field(name="Loss", value=f"{progress.loss:.4f}" if progress.loss is not None else "–")
        embed.add_field(name="Tokens/s", value=f"{progress.tokens_per_s:,.0f}")
        if not job.is_terminal:
            embed.add_field(name="ETA", value=format_duration(progress.eta_s))
    if job.started_at is not None:
        elapsed = (job.finished_at or now) - job.started_at
        embed.add_field(name="Elapsed", value=format_duration(elapsed))
    hub = hub_line(job)
    if hub:
        embed.add_field(name="Hugging Face Hub", value=_clip(hub, 1024), inline=False)
    if job.state == "failed" and job.error_message:
        embed.add_field(name="Error", value=_clip(f"{job.error_kind}: {ending(job)}", 1024), inline=False)
    if job.state == "cancelled":
        embed.add_field(name="Ended", value=_clip(ending(job), 1024), inline=False)
    embed.add_field(name="Owner", value=person(job.owner))
    embed.set_footer(text=f"{without_paths(job.spec.base_model)} · LoRA r={job.spec.lora.r}")
    return embed


def completion_embed(job: Job, metrics: dict, adapter: str | None) -> discord.Embed:
    embed = discord.Embed(title=f"Job {job.id} · {job.name}: {job.state}", colour=COLOURS[job.state])
    if job.state == "succeeded":
        for label, key, fmt in (
            ("Final loss", "final_loss", "{:.4f}"),
            ("Eval loss", "eval_loss", "{:.4f}"),
            ("Tokens", "tokens", "{:,}"),
            ("Steps", "steps", "{}"),
        ):
            if metrics.get(key) is not None:
                embed.add_field(name=label, value=fmt.format(metrics[key]))
        if metrics.get("total_runtime_s") is not None:
            embed.add_field(name="Runtime", value=format_duration(metrics["total_runtime_s"]))
        if adapter:
            embed.add_field(name="Try it", value=f"`/ask adapter:{adapter}`", inline=False)
        hub = hub_line(job)
        if hub:
            embed.add_field(name="Hugging Face Hub", value=_clip(hub, 1024), inline=False)
    else:
        embed.description = _clip(ending(job), 2000)
        advice = what_to_do(job)
        if advice:
            embed.add_field(name="What to do", value=_clip(advice, 1024), inline=False)
    return embed


def person(owner: str) -> str:
    """An owner id as Discord shows a person: a mention (it renders as their name), never the raw id."""
    user_id = discord_user_id(owner)
    if user_id is not None:
        return f"<@{user_id}>"
    return f"{owner.removeprefix('local:')} (terminal)" if owner.startswith("local:") else owner


def ending(job: Job) -> str:
    """Why the job ended, in Discord's words: a cancel names the person with a mention, not an id; files by
    their names in the job folder, never a path on the bot's machine."""
    message = job.error_message or job.state
    if job.state != "cancelled" or message != "cancelled":
        return without_paths(message, job.folder)
    by = job.cancel_requested_by
    return f"Cancelled by {person(by)}." if by else "Cancelled."


def what_to_do(job: Job) -> str:
    """What the person can do about the ending in Discord (never a path on the bot's machine)."""
    if job.state == "cancelled":
        checkpoint = checkpoint_to_resume(job)
        if checkpoint is None:
            return "It saved no checkpoint: start it again with `/finetune`."
        step = checkpoint_step(checkpoint)
        at = f" at step {step}" if step else ""
        return f"Its owner can press **Resume** to continue from its checkpoint{at}, as a new job."
    return without_paths(job.error_hint or "", job.folder)


def hub_line(job: Job) -> str:
    """Where the adapter was published, that it is being published, or why publishing failed."""
    if job.hub_state == "pushed" and job.hub_url:
        return job.hub_url
    if job.hub_state == "push_failed":
        error = without_paths(job.hub_error or "unknown error", job.folder)
        return f"not published: {error}. Retry with `/push id:{job.id}`."
    if job.publish_pending:
        return "publishing…"
    return ""


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
