"""Who may do what: roles from config.toml, Discord's Administrator permission, and job ownership."""

from __future__ import annotations

from collections.abc import Iterable

import discord

from bot.config import DiscordConfig
from bot.jobs.service import Requester
from protocol.errors import UserError


def requester_for(member: discord.abc.User, config: DiscordConfig) -> Requester:
    return Requester(owner=owner_id(member), is_admin=is_admin(member, config))


def owner_id(user: discord.abc.User) -> str:
    return f"discord:{user.id}"


def discord_user_id(owner: str) -> int | None:
    """The Discord user behind an owner id, or None for a terminal user."""
    prefix, _, user_id = owner.partition(":")
    return int(user_id) if prefix == "discord" and user_id.isdigit() else None


def is_admin(member: discord.abc.User, config: DiscordConfig) -> bool:
    permissions = getattr(member, "guild_permissions", None)
    if permissions is not None and permissions.administrator:
        return True
    return _has_any_role(member, config.admin_roles)


def require_role(member: discord.abc.User, roles: tuple[str, ...], config: DiscordConfig, what: str) -> None:
    """Refuse unless the member has one of `roles` (empty: everyone) or is an admin."""
    if not roles or is_admin(member, config) or _has_any_role(member, roles):
        return
    raise UserError(
        f"{what} needs one of these roles: {', '.join(roles)}", "ask a server admin to give you one of them"
    )


def _has_any_role(member: discord.abc.User, roles: Iterable[str]) -> bool:
    wanted = set(roles)
    return any(role.name in wanted or str(role.id) in wanted for role in getattr(member, "roles", ()))
