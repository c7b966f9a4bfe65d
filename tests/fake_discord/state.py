"""What the fake Discord knows: the guild, its members and channels, every message with its history,
interactions, registered commands and the request log; plus the waits tests use to observe it."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote

from tests.fake_discord.faults import Faults
from tests.fake_discord.interaction import FakeInteraction
from tests.fake_discord.models import (
    ADMINISTRATOR,
    ALL_PERMISSIONS,
    DEFAULT_EVERYONE_PERMISSIONS,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FakeAttachment,
    FakeChannel,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    MessageVersion,
    RequestRecord,
    Snowflakes,
    guess_content_type,
    utcnow,
)

if TYPE_CHECKING:
    from tests.fake_discord.gateway import GatewaySession

T = TypeVar("T")
SUPPRESS_EMBEDS, SUPPRESS_NOTIFICATIONS, COMPONENTS_V2 = 1 << 2, 1 << 12, 1 << 15
CREATE_FLAGS = FLAG_EPHEMERAL | SUPPRESS_EMBEDS | SUPPRESS_NOTIFICATIONS | COMPONENTS_V2  # what a bot may set
Upload = tuple[int, str, bytes, str | None]  # (index, filename, bytes, declared content type)


class DiscordState:
    """One application, one bot user, one guild: enough for an app bot's whole surface."""

    def __init__(self, *, bot_token: str = "fake-bot-token", ack_deadline: float | None = 3.0) -> None:
        self.ids = Snowflakes()
        self.sessions: list[GatewaySession] = []
        self._change = asyncio.Event()
        self.bot_token = bot_token
        # An interaction must be acknowledged within 3 s; later callbacks get 10062 Unknown interaction.
        self.ack_deadline = ack_deadline
        self.base_url = ""  # http://127.0.0.1:PORT, set by start()
        self.faults = Faults()
        self.application_id = self.ids.next()
        self.bot_user = FakeUser(self.application_id, "qlora-bot", bot=True)
        self.owner = FakeUser(self.ids.next(), "owner")
        self.users: dict[int, FakeUser] = {self.bot_user.id: self.bot_user, self.owner.id: self.owner}
        self.guild_id = self.ids.next()
        self.guild_name = "Fake Guild"
        self.roles: dict[int, FakeRole] = {
            self.guild_id: FakeRole(self.guild_id, "@everyone", DEFAULT_EVERYONE_PERMISSIONS, position=0)
        }
        self.members: dict[int, FakeMember] = {}
        self.channels: dict[int, FakeChannel] = {}
        self.channel_id = self.add_channel("general").id
        self.add_member(self.bot_user.id, self.bot_user.name)
        self.user = self.add_member(self.ids.next(), "tester")  # the default user in slash()/click()
        self.messages: dict[int, FakeMessage] = {}
        self.attachments: dict[int, FakeAttachment] = {}
        self.interactions: list[FakeInteraction] = []
        self.expired_tokens: set[str] = set()
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.command_syncs = 0
        self.requests: list[RequestRecord] = []
        self.unknown_routes: list[RequestRecord] = []
        # enforce_nonce: a create with a nonce its author used in the last few minutes returns that
        # message instead of posting another. Discord does not say how long it remembers ("the past few
        # minutes"); a test shortens it (0: forgets at once) to see what a bot does after that.
        self.nonce_window_s = 180.0
        self._nonces: dict[tuple[int, str], tuple[FakeMessage, float]] = {}

    # -- configuration -------------------------------------------------------------------------------

    def add_role(self, name: str, permissions: int = 0) -> FakeRole:
        role = FakeRole(self.ids.next(), name, permissions, position=len(self.roles))
        self.roles[role.id] = role
        self._broadcast("GUILD_ROLE_CREATE", {"guild_id": str(self.guild_id), "role": role.payload()})
        return role

    def role(self, name_or_id: str | int) -> FakeRole:
        for role in self.roles.values():
            if name_or_id in (role.id, role.name):
                return role
        raise KeyError(f"no role {name_or_id!r}; roles: {[r.name for r in self.roles.values()]}")

    def add_member(
        self, user_id: int, name: str, roles: Sequence[str | int] = (), admin: bool = False
    ) -> FakeMember:
        """A guild member. Roles by name (created when missing) or id; admin=True adds an
        Administrator role, as a server owner would."""
        role_ids = []
        for ref in roles:
            try:
                role_ids.append(self.role(ref).id)
            except KeyError:
                if isinstance(ref, int):
                    raise
                role_ids.append(self.add_role(ref).id)
        if admin:
            try:
                role_ids.append(self.role("Admin").id)
            except KeyError:
                role_ids.append(self.add_role("Admin", ADMINISTRATOR).id)
        user = self.users.setdefault(user_id, FakeUser(user_id, name, bot=user_id == self.bot_user.id))
        member = FakeMember(user, role_ids)
        self.members[user_id] = member
        self._broadcast("GUILD_MEMBER_ADD", {**member.payload(), "guild_id": str(self.guild_id)})
        return member

    def add_channel(self, name: str) -> FakeChannel:
        channel = FakeChannel(self.ids.next(), name, self.guild_id, position=len(self.channels))
        self.channels[channel.id] = channel
        self._broadcast("CHANNEL_CREATE", channel.payload())
        return channel

    def permissions_of(self, member: FakeMember) -> int:
        value = self.roles[self.guild_id].permissions
        for role_id in member.role_ids:
            value |= self.roles[role_id].permissions
        return ALL_PERMISSIONS if value & ADMINISTRATOR else value

    def guild_payload(self) -> dict[str, Any]:
        return {
            "id": str(self.guild_id),
            "name": self.guild_name,
            "icon": None,
            "owner_id": str(self.owner.id),
            "unavailable": False,
            "member_count": len(self.members),
            "large": False,
            "roles": [r.payload() for r in self.roles.values()],
            "channels": [c.payload() for c in self.channels.values() if c.type == 0],
            "members": [m.payload() for m in self.members.values()],
            "threads": [],
            "emojis": [],
            "stickers": [],
            "features": [],
            "voice_states": [],
            "presences": [],
            "preferred_locale": "en-US",
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "system_channel_id": str(self.channel_id),
            "joined_at": self.members[self.bot_user.id].payload()["joined_at"],
        }

    def app_info(self) -> dict[str, Any]:
        return {
            "id": str(self.application_id),
            "name": self.bot_user.name,
            "description": "",
            "icon": None,
            "bot_public": False,
            "bot_require_code_grant": False,
            "owner": self.owner.payload(),
            "verify_key": "0" * 64,
            "flags": 0,
            "team": None,
            "bot": self.bot_user.payload(),
            "interactions_endpoint_url": None,
        }

    # -- interactions and commands -------------------------------------------------------------------

    def new_interaction(self, **fields: Any) -> FakeInteraction:
        interaction = FakeInteraction(
            id=self.ids.next(),
            token="itok-" + secrets.token_urlsafe(24),
            created=asyncio.get_running_loop().time(),
            fake=self,  # type: ignore[arg-type]  # DiscordState is always a FakeDiscord at run time
            **fields,
        )
        self.interactions.append(interaction)
        return interaction

    def interaction_by_token(self, token: str) -> FakeInteraction | None:
        return next((i for i in self.interactions if i.token == token), None)

    def expire_interaction_tokens(self) -> None:
        """Every interaction token issued so far dies (as after 15 minutes): webhook routes with it
        answer 401 code 50027 and callbacks 404 code 10062. Later interactions get live tokens."""
        self.expired_tokens.update(i.token for i in self.interactions)

    def commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """Registered commands as echoed to the bot: global ones, or one guild's."""
        return self.global_commands if guild_id is None else self.guild_commands.get(guild_id, [])

    def command(self, name: str) -> dict[str, Any]:
        """A registered chat command, the guild's one first (as Discord shows it)."""
        for cmd in [*self.guild_commands.get(self.guild_id, []), *self.global_commands]:
            if cmd["name"] == name and cmd.get("type", 1) == 1:
                return cmd
        known = [c["name"] for c in [*self.global_commands, *self.guild_commands.get(self.guild_id, [])]]
        raise LookupError(f"no command /{name} registered; registered: {known}")

    # -- messages ------------------------------------------------------------------------------------

    def store_attachment(self, filename: str, data: bytes, content_type: str | None) -> FakeAttachment:
        att_id = self.ids.next()
        url = f"{self.base_url}/attachments/{att_id}/{quote(filename)}"
        att = FakeAttachment(att_id, filename, data, guess_content_type(filename, content_type), url)
        self.attachments[att_id] = att
        return att

    def _attachments_for(
        self, payload: dict[str, Any], uploads: list[Upload], existing: list[FakeAttachment]
    ) -> list[FakeAttachment]:
        by_index = {index: (name, data, ctype) for index, name, data, ctype in uploads}
        if "attachments" not in payload:
            kept = list(existing)
        else:
            kept, old = [], {a.id: a for a in existing}
            for entry in payload["attachments"] or []:
                ref = int(entry["id"])
                if ref in by_index:
                    name, data, ctype = by_index.pop(ref)
                    kept.append(self.store_attachment(entry.get("filename") or name, data, ctype))
                    kept[-1].description = entry.get("description")
                elif ref in old:
                    kept.append(old[ref])
        kept += [self.store_attachment(name, data, ctype) for name, data, ctype in by_index.values()]
        return kept

    def create_message(
        self,
        channel_id: int,
        payload: dict[str, Any],
        uploads: list[Upload],
        *,
        author: FakeUser | None = None,
        interaction: FakeInteraction | None = None,
        webhook_id: int | None = None,
        extra_flags: int = 0,
    ) -> FakeMessage:
        channel = self.channels[channel_id]
        version = MessageVersion(
            content=payload.get("content") or "",
            embeds=payload.get("embeds") or ([payload["embed"]] if payload.get("embed") else []),
            components=payload.get("components") or [],
            attachments=self._attachments_for(payload, uploads, []),
            flags=(int(payload.get("flags") or 0) & CREATE_FLAGS) | extra_flags,
            at=utcnow(),
            kind="create",
        )
        msg = FakeMessage(
            id=self.ids.next(),
            channel_id=channel_id,
            guild_id=channel.guild_id,
            author=author or self.bot_user,
            versions=[version],
            allowed_mentions=payload.get("allowed_mentions"),
            webhook_id=webhook_id,
            interaction=interaction,
            message_reference=payload.get("message_reference"),
        )
        self.messages[msg.id] = msg
        if not msg.ephemeral:
            self._broadcast("MESSAGE_CREATE", msg.payload(self.users), intent=9 if channel.guild_id else 12)
        self.changed()
        return msg

    def message_for_nonce(self, author: FakeUser, payload: dict[str, Any]) -> FakeMessage | None:
        """The message a create with enforce_nonce gets back instead of a new one, if its nonce is known."""
        nonce = payload.get("nonce")
        if not payload.get("enforce_nonce") or nonce is None:
            return None
        known = self._nonces.get((author.id, str(nonce)))
        if known is None or time.monotonic() - known[1] > self.nonce_window_s or known[0].deleted:
            return None
        return known[0]

    def remember_nonce(self, message: FakeMessage, payload: dict[str, Any]) -> None:
        if payload.get("nonce") is not None:
            message.nonce = str(payload["nonce"])
            self._nonces[(message.author.id, message.nonce)] = (message, time.monotonic())

    def edit_message(self, msg: FakeMessage, payload: dict[str, Any], uploads: list[Upload]) -> FakeMessage:
        old = msg.current
        embeds = old.embeds
        if "embeds" in payload or "embed" in payload:
            embeds = payload.get("embeds") or ([payload["embed"]] if payload.get("embed") else [])
        msg.versions.append(
            MessageVersion(
                content=(payload.get("content") or "") if "content" in payload else old.content,
                embeds=embeds,
                components=(payload.get("components") or []) if "components" in payload else old.components,
                attachments=self._attachments_for(payload, uploads, old.attachments),
                flags=_edited_flags(old.flags, payload),
                at=utcnow(),
                kind="edit",
            )
        )
        if "allowed_mentions" in payload:
            msg.allowed_mentions = payload["allowed_mentions"]
        if not msg.ephemeral:
            self._broadcast("MESSAGE_UPDATE", msg.payload(self.users), intent=9 if msg.guild_id else 12)
        self.changed()
        return msg

    def delete_message(self, msg: FakeMessage) -> None:
        msg.deleted = True
        data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
        if msg.guild_id:
            data["guild_id"] = str(msg.guild_id)
        self._broadcast("MESSAGE_DELETE", data, intent=9 if msg.guild_id else 12)
        self.changed()

    # -- observation ---------------------------------------------------------------------------------

    def message(self, message_id: int) -> FakeMessage:
        return self.messages[int(message_id)]

    def channel_messages(
        self, channel_id: int | None = None, *, include_ephemeral: bool = False, include_deleted: bool = False
    ) -> list[FakeMessage]:
        """Messages in a channel (default: #general) in the order they were posted, each in its
        current state with `.versions` (its history)."""
        channel_id = self.channel_id if channel_id is None else channel_id
        return [
            m
            for m in self.messages.values()
            if m.channel_id == channel_id
            and (include_ephemeral or not m.ephemeral)
            and (include_deleted or not m.deleted)
        ]

    def edits_of(self, message_id: int) -> list[MessageVersion]:
        return self.message(message_id).edits

    def messages_mentioning(self, user_id: int) -> list[FakeMessage]:
        """Messages that notified the user: mentioned when posted (not by a later edit), allowed by
        allowed_mentions."""
        return [m for m in self.messages.values() if not m.deleted and user_id in m.pinged_ids()]

    def requests_to(self, method: str, path_regex: str) -> list[RequestRecord]:
        pattern = re.compile(path_regex)
        return [r for r in self.requests if r.method == method and pattern.fullmatch(r.path)]

    # -- change notification -------------------------------------------------------------------------

    def changed(self) -> None:
        self._change.set()
        self._change = asyncio.Event()

    async def wait_for(
        self, predicate: Callable[[], T], timeout: float = 5.0, *, what: str | None = None
    ) -> T:
        """Wait until predicate() is truthy and return its value. Re-checked on every change the
        fake sees and at least every 50 ms (so predicates over bot-side state work too)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                recent = [f"{r.method} {r.path} -> {r.status}" for r in self.requests[-8:]]
                raise TimeoutError(
                    f"timed out after {timeout}s waiting for {what or predicate}; last requests: {recent}"
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._change.wait(), min(remaining, 0.05))

    def _broadcast(self, event: str, data: dict[str, Any], intent: int | None = None) -> None:
        """Send a dispatch to every live session (whose intents include `intent`, a bit number)."""
        for session in self.sessions:
            if session.ready and not session.closed and (intent is None or session.intents >> intent & 1):
                session.queue_dispatch(event, data)


def _edited_flags(old: int, payload: dict[str, Any]) -> int:
    """Editing settles a "thinking" message; ephemerality and components v2 are fixed at creation;
    only SUPPRESS_EMBEDS can be toggled."""
    flags = old & ~FLAG_LOADING
    if payload.get("flags") is not None:
        flags = (flags & ~SUPPRESS_EMBEDS) | (int(payload["flags"]) & SUPPRESS_EMBEDS)
    return flags
