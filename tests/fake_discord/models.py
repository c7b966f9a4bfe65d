"""Records the fake Discord keeps (users, roles, channels, messages, interactions) and their JSON payloads.

Payloads carry the keys discord.py 2.7 reads without a default (checked against its parsers), so the real
client can build its models from them.
"""

from __future__ import annotations

import datetime as dt
import mimetypes
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fake_discord.interaction import FakeInteraction

DISCORD_EPOCH_MS = 1420070400000
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
ADMINISTRATOR = 1 << 3
# Every permission bit Discord defines today; an administrator is sent all of them.
ALL_PERMISSIONS = (1 << 51) - 1
# @everyone in a fresh guild: view channels, send messages, embed links, attach files, read history,
# use application commands (the bits a default member has).
DEFAULT_EVERYONE_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 14) | (1 << 15) | (1 << 16) | (1 << 31)
ATTACHMENT_SIZE_LIMIT = 10 * 1024 * 1024

_MENTION = re.compile(r"<@!?(\d+)>")


class Snowflakes:
    """Discord-shaped ids: time in the high bits, strictly increasing."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        now = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(self._last + 1, now)
        return self._last


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


@dataclass
class FakeUser:
    id: int
    name: str
    bot: bool = False

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.name,
            "global_name": self.name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
        }


@dataclass
class FakeRole:
    id: int
    name: str
    permissions: int = 0
    position: int = 1

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": False,
            "mentionable": True,
            "flags": 0,
            "icon": None,
            "unicode_emoji": None,
        }


@dataclass
class FakeMember:
    user: FakeUser
    role_ids: list[int]
    joined_at: dt.datetime = field(default_factory=utcnow)

    @property
    def id(self) -> int:
        return self.user.id

    def payload(self, permissions: int | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user": self.user.payload(),
            "roles": [str(r) for r in self.role_ids],
            "joined_at": iso(self.joined_at),
            "premium_since": None,
            "nick": None,
            "avatar": None,
            "flags": 0,
            "pending": False,
            "deaf": False,
            "mute": False,
            "communication_disabled_until": None,
        }
        if permissions is not None:
            data["permissions"] = str(permissions)
        return data


@dataclass
class FakeChannel:
    id: int
    name: str
    guild_id: int | None
    type: int = 0  # 0 guild text, 1 DM
    position: int = 0
    recipient: FakeUser | None = None

    def payload(self) -> dict[str, Any]:
        if self.type == 1:
            assert self.recipient is not None
            return {
                "id": str(self.id),
                "type": 1,
                "last_message_id": None,
                "recipients": [self.recipient.payload()],
            }
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }


@dataclass
class FakeAttachment:
    """A file the fake holds and serves itself at `url` (uploads by the user and files the bot sent)."""

    id: int
    filename: str
    data: bytes
    content_type: str
    url: str
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": self.url,
            "proxy_url": self.url,
            "content_type": self.content_type,
        }
        if self.description:
            data["description"] = self.description
        return data


def guess_content_type(filename: str, declared: str | None) -> str:
    # discord.py labels every upload application/octet-stream; Discord sniffs the real type.
    if declared and declared != "application/octet-stream":
        return declared
    return mimetypes.guess_type(filename)[0] or "application/octet-stream"


@dataclass(frozen=True)
class MessageVersion:
    """One state of a message: what it was created with, or what an edit left it as."""

    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachments: list[FakeAttachment]
    flags: int
    at: dt.datetime
    kind: str  # "create" | "edit"


def walk_components(components: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every component, nested ones included (action rows, containers, section accessories)."""
    for component in components:
        yield component
        yield from walk_components(component.get("components", []))
        if isinstance(component.get("accessory"), dict):
            yield component["accessory"]


@dataclass
class FakeMessage:
    id: int
    channel_id: int
    guild_id: int | None
    author: FakeUser
    versions: list[MessageVersion]
    allowed_mentions: dict[str, Any] | None = None
    webhook_id: int | None = None
    interaction: FakeInteraction | None = None
    message_reference: dict[str, Any] | None = None
    deleted: bool = False
    nonce: str | None = None  # in the create's response only: Discord's history does not return it

    @property
    def current(self) -> MessageVersion:
        return self.versions[-1]

    @property
    def content(self) -> str:
        return self.current.content

    @property
    def embeds(self) -> list[dict[str, Any]]:
        return self.current.embeds

    @property
    def components(self) -> list[dict[str, Any]]:
        return self.current.components

    @property
    def attachments(self) -> list[FakeAttachment]:
        return self.current.attachments

    @property
    def files(self) -> dict[str, bytes]:
        return {a.filename: a.data for a in self.attachments}

    @property
    def flags(self) -> int:
        return self.current.flags

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def created_at(self) -> dt.datetime:
        return self.versions[0].at

    @property
    def edited_at(self) -> dt.datetime | None:
        return self.versions[-1].at if len(self.versions) > 1 else None

    @property
    def edits(self) -> list[MessageVersion]:
        return self.versions[1:]

    @property
    def custom_ids(self) -> list[str]:
        return [c["custom_id"] for c in walk_components(self.components) if "custom_id" in c]

    def component(self, custom_id: str) -> dict[str, Any] | None:
        return next((c for c in walk_components(self.components) if c.get("custom_id") == custom_id), None)

    def mentioned_ids(self, version: MessageVersion | None = None) -> list[int]:
        return [int(m) for m in _MENTION.findall((version or self.current).content)]

    def pinged_ids(self) -> list[int]:
        """Users notified: mentions in the content the message was first posted with (edits do not
        notify; a deferred "thinking" message is first posted when it gets content), filtered by
        allowed_mentions."""
        first = next((v for v in self.versions if not v.flags & FLAG_LOADING), None)
        if first is None:
            return []
        ids = self.mentioned_ids(first)
        allowed = self.allowed_mentions
        if allowed is None:
            return ids
        parse = allowed.get("parse", [])
        listed = {int(u) for u in allowed.get("users", [])}
        return [u for u in ids if "users" in parse or u in listed]

    def payload(self, users: dict[int, FakeUser]) -> dict[str, Any]:
        version = self.current
        is_response = self.interaction is not None and self.interaction.type == 2
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.payload(),
            "content": version.content,
            "embeds": version.embeds,
            "components": version.components,
            "attachments": [a.payload() for a in version.attachments],
            "timestamp": iso(self.created_at),
            "edited_timestamp": iso(self.edited_at),
            "flags": version.flags,
            "type": 20 if is_response else (19 if self.message_reference else 0),
            "tts": False,
            "mention_everyone": False,
            "mentions": [users[u].payload() for u in self.mentioned_ids() if u in users],
            "mention_roles": [],
            "pinned": False,
        }
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
            data["application_id"] = str(self.webhook_id)
        if self.message_reference:
            data["message_reference"] = self.message_reference
        if self.interaction is not None:
            data["interaction_metadata"] = {
                "id": str(self.interaction.id),
                "type": self.interaction.type,
                "user": users[self.interaction.user_id].payload(),
                "authorizing_integration_owners": {},
            }
        return data


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str  # without the /api/v10 prefix
    status: int
    query: dict[str, str]
    body: Any = None
    files: tuple[str, ...] = ()
    at: float = field(default_factory=time.monotonic)  # when it was answered
