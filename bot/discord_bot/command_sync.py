"""Register the slash commands with Discord only when their definitions changed (a stored hash).

Syncing on every start is slow and rate-limited; guild commands appear at once, global ones can take
an hour, so configured guilds get their own copy.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import discord
from discord import app_commands

log = logging.getLogger(__name__)


def commands_digest(tree: app_commands.CommandTree, guild_ids: tuple[int, ...]) -> str:
    payload = {
        "guilds": sorted(guild_ids),
        "commands": sorted(
            (command.to_dict(tree) for command in tree.get_commands()), key=lambda c: c["name"]
        ),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


async def sync_commands_if_changed(
    tree: app_commands.CommandTree, guild_ids: tuple[int, ...], state_file: Path
) -> bool:
    """Sync to each configured guild (or globally without any); True if a sync was needed."""
    digest = commands_digest(tree, guild_ids)
    if state_file.exists() and state_file.read_text().strip() == digest:
        log.info("slash commands unchanged; not syncing")
        return False
    if guild_ids:
        for guild_id in guild_ids:
            guild = discord.Object(id=guild_id)
            tree.copy_global_to(guild=guild)
            await tree.sync(guild=guild)
    else:
        await tree.sync()
    state_file.parent.mkdir(parents=True, exist_ok=True)
    state_file.write_text(digest + "\n")
    log.info("slash commands synced to %s", ", ".join(map(str, guild_ids)) or "all guilds (global)")
    return True
