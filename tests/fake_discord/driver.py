"""The user side: build INTERACTION_CREATE payloads the way the Discord client would (options typed
from the registered command, attachments uploaded and resolved) and dispatch them to the bot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tests.fake_discord.interaction import FakeInteraction
from tests.fake_discord.models import (
    ATTACHMENT_SIZE_LIMIT,
    FakeAttachment,
    FakeMember,
    FakeMessage,
    FakeUser,
)
from tests.fake_discord.state import DiscordState

if TYPE_CHECKING:
    from tests.fake_discord.gateway import GatewaySession

UserRef = int | FakeUser | FakeMember | None
FileSpec = tuple[str, bytes, str]  # (filename, bytes, content type)
# Discord's application command option types.
SUBCOMMAND, GROUP, STRING, INTEGER, BOOLEAN, USER = 1, 2, 3, 4, 5, 6
CHANNEL, ROLE, MENTIONABLE, NUMBER, ATTACHMENT = 7, 8, 9, 10, 11


class InteractionDriver(DiscordState):
    async def slash(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        user: UserRef = None,
        channel: int | None = None,
        attachments: Sequence[FileSpec] = (),
        subcommand: str | None = None,
    ) -> FakeInteraction:
        """Invoke /name [subcommand] with options. Values are typed from the registered command:
        str/int/float/bool; users as ids or FakeUser/FakeMember; roles by id or name; channels by id;
        attachment options take (filename, bytes, content_type) or a FakeAttachment, and the
        `attachments` list fills the attachment options not given by name, in order."""
        cmd = self.command(name)
        specs, path = self._option_specs(cmd, subcommand)
        values = dict(options or {})
        pending = list(attachments)
        for spec in specs:
            if spec["type"] == ATTACHMENT and spec["name"] not in values and pending:
                values[spec["name"]] = pending.pop(0)
        if pending:
            raise ValueError(f"/{name} has no free attachment option for {[p[0] for p in pending]}")
        missing = [s["name"] for s in specs if s.get("required") and s["name"] not in values]
        if missing:
            raise ValueError(f"/{name}: required options missing: {missing}")
        resolved: dict[str, dict[str, Any]] = {}
        typed = [self._typed_option(name, specs, key, value, resolved) for key, value in values.items()]
        data = self._command_data(cmd, path, typed)
        if resolved:
            data["resolved"] = resolved
        return await self._dispatch_interaction(2, data, name, user, channel)

    async def autocomplete(
        self,
        name: str,
        options: dict[str, Any] | None = None,
        *,
        focused: str,
        user: UserRef = None,
        channel: int | None = None,
        subcommand: str | None = None,
        timeout: float = 5.0,
    ) -> list[dict[str, Any]]:
        """Type into option `focused` of /name and return the choices the bot offered
        ([{"name": ..., "value": ...}])."""
        cmd = self.command(name)
        specs, path = self._option_specs(cmd, subcommand)
        values = dict(options or {})
        values.setdefault(focused, "")
        typed = []
        for key, value in values.items():
            if key == focused:
                spec = self._spec(name, specs, key)
                # The client sends what is typed so far, as a string, whatever the option's type.
                typed.append({"name": key, "type": spec["type"], "value": str(value), "focused": True})
            else:
                typed.append(self._typed_option(name, specs, key, value, {}))
        interaction = await self._dispatch_interaction(
            4, self._command_data(cmd, path, typed), name, user, channel
        )
        await interaction.wait_response(timeout)
        if interaction.choices is None:
            raise AssertionError(f"autocomplete for /{name} got response type {interaction.response_type}")
        return interaction.choices

    async def click(
        self,
        message: int | FakeMessage,
        custom_id: str,
        *,
        user: UserRef = None,
        values: list[str] | None = None,
    ) -> FakeInteraction:
        """Press the component `custom_id` on a message the bot sent (a select takes `values`).
        Refuses, as Discord's client would, a custom_id that is not on the message or is disabled."""
        msg = message if isinstance(message, FakeMessage) else self.message(message)
        component = msg.component(custom_id)
        if component is None:
            raise ValueError(f"message {msg.id} has no component {custom_id!r}; it has {msg.custom_ids}")
        if component.get("disabled"):
            raise ValueError(f"component {custom_id!r} on message {msg.id} is disabled")
        data: dict[str, Any] = {"custom_id": custom_id, "component_type": component["type"]}
        if component["type"] != 2:
            data["values"] = list(values or [])
        extra = {"message": msg.payload(self.users)}
        return await self._dispatch_interaction(3, data, custom_id, user, msg.channel_id, msg.id, extra)

    async def redeliver(self, interaction: FakeInteraction) -> None:
        """Dispatch the same INTERACTION_CREATE again (same id and token), as after a gateway hiccup;
        a second acknowledgement gets 400 code 40060."""
        session = self.live_session()
        session.queue_dispatch("INTERACTION_CREATE", interaction.payload)
        await session.flush()

    # -- payload building -----------------------------------------------------------------------------

    def _option_specs(
        self, cmd: dict[str, Any], subcommand: str | None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        specs = cmd.get("options") or []
        path = subcommand.split() if subcommand else []
        for part in path:
            found = next((o for o in specs if o["name"] == part and o["type"] in (SUBCOMMAND, GROUP)), None)
            if found is None:
                raise LookupError(f"/{cmd['name']} has no subcommand {part!r}")
            specs = found.get("options") or []
        if any(o["type"] in (SUBCOMMAND, GROUP) for o in specs):
            raise ValueError(f"/{cmd['name']} needs a subcommand: {[o['name'] for o in specs]}")
        return specs, path

    @staticmethod
    def _spec(command: str, specs: list[dict[str, Any]], key: str) -> dict[str, Any]:
        spec = next((s for s in specs if s["name"] == key), None)
        if spec is None:
            raise ValueError(f"/{command} has no option {key!r}; options: {[s['name'] for s in specs]}")
        return spec

    def _typed_option(
        self,
        command: str,
        specs: list[dict[str, Any]],
        key: str,
        value: Any,
        resolved: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        spec = self._spec(command, specs, key)
        kind = spec["type"]
        if kind == STRING:
            value = str(value)
        elif kind == INTEGER:
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"/{command} {key} takes an int, got {value!r}")
        elif kind == NUMBER:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise TypeError(f"/{command} {key} takes a number, got {value!r}")
        elif kind == BOOLEAN:
            value = bool(value)
        elif kind in (USER, MENTIONABLE):
            member = self._member(value)
            resolved.setdefault("users", {})[str(member.id)] = member.user.payload()
            member_data = member.payload(self.permissions_of(member))
            member_data.pop("user")
            resolved.setdefault("members", {})[str(member.id)] = member_data
            value = str(member.id)
        elif kind == ROLE:
            role = self.role(value)
            resolved.setdefault("roles", {})[str(role.id)] = role.payload()
            value = str(role.id)
        elif kind == CHANNEL:
            channel = self.channels[int(value)]
            resolved.setdefault("channels", {})[str(channel.id)] = {**channel.payload(), "permissions": "0"}
            value = str(channel.id)
        elif kind == ATTACHMENT:
            att = value if isinstance(value, FakeAttachment) else self.store_attachment(*value)
            resolved.setdefault("attachments", {})[str(att.id)] = att.payload()
            value = str(att.id)
        if "choices" in spec and value not in [c["value"] for c in spec["choices"]]:
            raise ValueError(f"/{command} {key}={value!r} is not one of its choices")
        for bound, ok in (("min_value", lambda b: value >= b), ("max_value", lambda b: value <= b)):
            if bound in spec and not ok(spec[bound]):
                raise ValueError(f"/{command} {key}={value!r} breaks {bound}={spec[bound]}")
        return {"name": key, "type": kind, "value": value}

    def _command_data(
        self, cmd: dict[str, Any], path: list[str], typed: list[dict[str, Any]]
    ) -> dict[str, Any]:
        options = typed
        for depth in range(len(path) - 1, -1, -1):
            options = [
                {
                    "name": path[depth],
                    "type": SUBCOMMAND if depth == len(path) - 1 else GROUP,
                    "options": options,
                }
            ]
        data = {"id": cmd["id"], "name": cmd["name"], "type": 1, "options": options}
        if cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        return data

    def _member(self, user: UserRef) -> FakeMember:
        if user is None:
            return self.user
        user_id = user if isinstance(user, int) else user.id
        try:
            return self.members[user_id]
        except KeyError:
            raise LookupError(f"user {user_id} is not a member; add_member() first") from None

    async def _dispatch_interaction(
        self,
        kind: int,
        data: dict[str, Any],
        name: str,
        user: UserRef,
        channel_id: int | None,
        message_id: int | None = None,
        extra: dict[str, Any] | None = None,
    ) -> FakeInteraction:
        session = self.live_session()
        member = self._member(user)
        channel = self.channels[self.channel_id if channel_id is None else channel_id]
        payload: dict[str, Any] = {
            "application_id": str(self.application_id),
            "type": kind,
            "data": data,
            "version": 1,
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)},
            "attachment_size_limit": ATTACHMENT_SIZE_LIMIT,
            "app_permissions": str(self.permissions_of(self.members[self.bot_user.id])),
            "channel_id": str(channel.id),
            "channel": {**channel.payload(), "permissions": str(self.permissions_of(member))},
        }
        if channel.guild_id:
            payload |= {
                "guild_id": str(self.guild_id),
                "guild": {"id": str(self.guild_id), "locale": "en-US", "features": []},
                "guild_locale": "en-US",
                "member": member.payload(self.permissions_of(member)),
                "context": 0,
            }
        else:
            payload |= {"user": member.user.payload(), "context": 1}
        payload |= extra or {}
        interaction = self.new_interaction(
            type=kind,
            name=name,
            user_id=member.id,
            channel_id=channel.id,
            payload=payload,
            message_id=message_id,
        )
        payload |= {"id": str(interaction.id), "token": interaction.token}
        session.queue_dispatch("INTERACTION_CREATE", payload)
        await session.flush()
        return interaction

    def live_session(self) -> GatewaySession:
        session = next((s for s in reversed(self.sessions) if s.ready and not s.closed), None)
        if session is None:
            raise RuntimeError("no bot is connected to the fake gateway")
        return session
