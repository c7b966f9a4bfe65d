"""The fake REST API under /api/v10: the routes an application bot uses, plus attachment downloads.

Every request is logged; a route the fake does not know answers 404 JSON and is listed in
`unknown_routes`, so a test can assert the bot called nothing unexpected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tests.fake_discord.faults import error_response, json_response
from tests.fake_discord.interaction import FakeInteraction
from tests.fake_discord.models import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    FakeChannel,
    FakeMessage,
    RequestRecord,
)
from tests.fake_discord.state import DiscordState, Upload

API = "/api/v10"
RECORD = web.RequestKey("record", dict)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def read_body(request: web.Request) -> tuple[dict[str, Any], list[Upload]]:
    """A JSON body, or discord.py's multipart form: `payload_json` plus `files[n]` parts."""
    payload: dict[str, Any] = {}
    uploads: list[Upload] = []
    if request.content_type.startswith("multipart/"):
        async for part in await request.multipart():
            name = part.name or ""
            if name == "payload_json":
                payload = json.loads(await part.text())
            elif name.startswith("files["):
                data = await part.read(decode=False)
                uploads.append(
                    (int(name[6:-1]), part.filename or "file", bytes(data), part.headers.get("Content-Type"))
                )
    elif request.can_read_body:
        raw = await request.read()
        payload = json.loads(raw) if raw else {}
    request[RECORD].update(body=payload, files=tuple(u[1] for u in uploads))
    return payload, uploads


def _unknown_interaction() -> web.Response:
    return error_response(404, "Unknown interaction", 10062)


def _invalid_webhook_token() -> web.Response:
    return error_response(401, "Invalid Webhook Token", 50027)


class RestApi:
    def __init__(self, state: DiscordState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(API + "/gateway", self.get_gateway),
            web.get(API + "/gateway/bot", self.get_gateway),
            web.get(API + "/users/@me", self.get_me),
            web.get(API + "/users/{user_id:\\d+}", self.get_user),
            web.post(API + "/users/@me/channels", self.create_dm),
            web.get(API + "/oauth2/applications/@me", self.get_app),
            web.get(API + "/applications/@me", self.get_app),
            web.put(API + "/applications/{app}/commands", self.put_commands),
            web.get(API + "/applications/{app}/commands", self.get_commands),
            web.put(API + "/applications/{app}/guilds/{guild}/commands", self.put_commands),
            web.get(API + "/applications/{app}/guilds/{guild}/commands", self.get_commands),
            web.post(API + "/interactions/{iid}/{token}/callback", self.callback),
            web.post(API + "/webhooks/{app}/{token}", self.followup),
            web.get(API + "/webhooks/{app}/{token}/messages/{mid}", self.webhook_message),
            web.patch(API + "/webhooks/{app}/{token}/messages/{mid}", self.webhook_message),
            web.delete(API + "/webhooks/{app}/{token}/messages/{mid}", self.webhook_message),
            web.get(API + "/channels/{cid:\\d+}", self.get_channel),
            web.get(API + "/channels/{cid:\\d+}/messages", self.history),
            web.post(API + "/channels/{cid:\\d+}/messages", self.send),
            web.get(API + "/channels/{cid:\\d+}/messages/{mid:\\d+}", self.channel_message),
            web.patch(API + "/channels/{cid:\\d+}/messages/{mid:\\d+}", self.channel_message),
            web.delete(API + "/channels/{cid:\\d+}/messages/{mid:\\d+}", self.channel_message),
            web.get(API + "/guilds/{gid:\\d+}", self.get_guild),
            web.get(API + "/guilds/{gid:\\d+}/roles", self.get_roles),
            web.get(API + "/guilds/{gid:\\d+}/channels", self.get_channels),
            web.get(API + "/guilds/{gid:\\d+}/members/{uid:\\d+}", self.get_member),
            web.get("/attachments/{aid:\\d+}/{filename}", self.attachment),
        ]

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if not path.startswith(API):
            return await handler(request)
        path = path[len(API) :]
        request[RECORD] = record = {"body": None, "files": ()}
        delay = self.state.faults.route_delay(request.method, path)
        if delay:
            await asyncio.sleep(delay)
        response = self._precheck(request, path)
        if response is None:
            try:
                response = await handler(request)
            except web.HTTPNotFound:
                response = error_response(404, "404: Not Found", 0)
                self.state.unknown_routes.append(
                    RequestRecord(request.method, path, 404, dict(request.query))
                )
            except web.HTTPMethodNotAllowed:
                response = error_response(405, "405: Method Not Allowed", 0)
                self.state.unknown_routes.append(
                    RequestRecord(request.method, path, 405, dict(request.query))
                )
        self.state.requests.append(
            RequestRecord(
                request.method, path, response.status, dict(request.query), record["body"], record["files"]
            )
        )
        self.state.changed()
        return response

    def _precheck(self, request: web.Request, path: str) -> web.Response | None:
        injected = self.state.faults.route_failure(request.method, path)
        if injected is not None:
            return injected
        # Interaction callbacks and webhook routes authenticate by the token in the URL.
        if path.startswith(("/interactions/", "/webhooks/", "/gateway")):
            return None
        if request.headers.get("Authorization") != f"Bot {self.state.bot_token}":
            return error_response(401, "401: Unauthorized", 0)
        return None

    # -- identity -------------------------------------------------------------------------------------

    async def get_gateway(self, request: web.Request) -> web.Response:
        url = self.state.base_url.replace("http://", "ws://") + "/gateway"
        limit = {"total": 1000, "remaining": 1000, "reset_after": 0, "max_concurrency": 1}
        return json_response({"url": url, "shards": 1, "session_start_limit": limit})

    async def get_me(self, request: web.Request) -> web.Response:
        return json_response(self.state.bot_user.payload())

    async def get_user(self, request: web.Request) -> web.Response:
        user = self.state.users.get(int(request.match_info["user_id"]))
        return json_response(user.payload()) if user else error_response(404, "Unknown User", 10013)

    async def create_dm(self, request: web.Request) -> web.Response:
        payload, _ = await read_body(request)
        user = self.state.users.get(int(payload["recipient_id"]))
        if user is None:
            return error_response(404, "Unknown User", 10013)
        channel = next((c for c in self.state.channels.values() if c.recipient is user), None)
        if channel is None:
            channel = FakeChannel(self.state.ids.next(), user.name, None, type=1, recipient=user)
            self.state.channels[channel.id] = channel
        return json_response(channel.payload())

    async def get_app(self, request: web.Request) -> web.Response:
        return json_response(self.state.app_info())

    async def get_guild(self, request: web.Request) -> web.Response:
        if int(request.match_info["gid"]) != self.state.guild_id:
            return error_response(404, "Unknown Guild", 10004)
        return json_response(self.state.guild_payload())

    async def get_roles(self, request: web.Request) -> web.Response:
        return json_response([r.payload() for r in self.state.roles.values()])

    async def get_channels(self, request: web.Request) -> web.Response:
        return json_response([c.payload() for c in self.state.channels.values() if c.guild_id])

    async def get_member(self, request: web.Request) -> web.Response:
        member = self.state.members.get(int(request.match_info["uid"]))
        return json_response(member.payload()) if member else error_response(404, "Unknown Member", 10007)

    async def attachment(self, request: web.Request) -> web.Response:
        att = self.state.attachments.get(int(request.match_info["aid"]))
        if att is None or att.filename != request.match_info["filename"]:
            return web.Response(status=404, text="not found")
        return web.Response(body=att.data, headers={"Content-Type": att.content_type})

    # -- application commands -------------------------------------------------------------------------

    async def put_commands(self, request: web.Request) -> web.Response:
        state = self.state
        if int(request.match_info["app"]) != state.application_id:
            return error_response(403, "Missing Access", 50001)
        guild = request.match_info.get("guild")
        payload, _ = await read_body(request)
        previous = {(c["name"], c.get("type", 1)): c for c in state.commands(int(guild) if guild else None)}
        echoed = []
        for cmd in payload:
            old = previous.get((cmd["name"], cmd.get("type", 1)))
            out = {
                "type": 1,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "nsfw": False,
            }
            out |= cmd
            # Discord keeps a command's id across overwrites when its name and type stay the same.
            out |= {
                "id": old["id"] if old else str(state.ids.next()),
                "application_id": str(state.application_id),
            }
            out["version"] = str(state.ids.next())
            if guild:
                out["guild_id"] = guild
            echoed.append(out)
        if guild:
            state.guild_commands[int(guild)] = echoed
        else:
            state.global_commands = echoed
        state.command_syncs += 1
        return json_response(echoed)

    async def get_commands(self, request: web.Request) -> web.Response:
        guild = request.match_info.get("guild")
        return json_response(self.state.commands(int(guild) if guild else None))

    # -- interactions ---------------------------------------------------------------------------------

    async def callback(self, request: web.Request) -> web.Response:
        state = self.state
        interaction = next((i for i in state.interactions if str(i.id) == request.match_info["iid"]), None)
        if interaction is None or interaction.token != request.match_info["token"]:
            return _unknown_interaction()
        payload, uploads = await read_body(request)
        late = state.ack_deadline is not None and (
            request.loop.time() - interaction.created > state.ack_deadline
        )
        if interaction.token in state.expired_tokens or late:
            return _unknown_interaction()
        if interaction.responses:
            return error_response(400, "Interaction has already been acknowledged.", 40060)
        kind, data = payload["type"], payload.get("data") or {}
        message = None
        if kind == 4:
            message = state.create_message(interaction.channel_id, data, uploads, interaction=interaction)
            interaction.original = message
        elif kind == 5:
            flags = FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL)
            message = state.create_message(
                interaction.channel_id, {}, [], interaction=interaction, extra_flags=flags
            )
            interaction.original = message
        elif kind == 7 and interaction.message_id is not None:
            message = state.edit_message(state.message(interaction.message_id), data, uploads)
        interaction.responses.append(payload)
        state.changed()
        # discord.py always asks ?with_response=1 and reads the InteractionCallback object.
        body: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "response_message_loading": kind == 5,
                "response_message_ephemeral": bool(message and message.ephemeral),
            },
            "resource": {"type": kind},
        }
        if message is not None:
            body["interaction"]["response_message_id"] = str(message.id)
            body["resource"]["message"] = message.payload(state.users)
        return json_response(body)

    def _interaction_for(self, request: web.Request) -> FakeInteraction | web.Response:
        interaction = self.state.interaction_by_token(request.match_info["token"])
        if (
            interaction is None
            or interaction.token in self.state.expired_tokens
            or request.match_info["app"] != str(self.state.application_id)
        ):
            return _invalid_webhook_token()
        return interaction

    async def followup(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for(request)
        if isinstance(interaction, web.Response):
            return interaction
        if not interaction.responses:
            return error_response(404, "Unknown Webhook", 10015)
        payload, uploads = await read_body(request)
        state = self.state
        original = interaction.original
        if original is not None and original.loading and not interaction.followups:
            # The first followup after a "thinking" defer fills that message in (and keeps the
            # defer's ephemerality), as on Discord.
            message = state.edit_message(original, payload, uploads)
        else:
            message = state.create_message(
                interaction.channel_id,
                payload,
                uploads,
                interaction=interaction,
                webhook_id=state.application_id,
            )
        interaction.followups.append(message)
        state.changed()
        if request.query.get("wait") in ("1", "true", "True"):
            return json_response(message.payload(state.users))
        return json_response(None, 204)

    async def webhook_message(self, request: web.Request) -> web.Response:
        interaction = self._interaction_for(request)
        if isinstance(interaction, web.Response):
            return interaction
        mid = request.match_info["mid"]
        candidates = [m for m in [interaction.original, *interaction.followups] if m is not None]
        if mid == "@original":
            message = interaction.original
        else:
            message = next((m for m in candidates if str(m.id) == mid), None)
        if message is None or message.deleted:
            return error_response(404, "Unknown Message", 10008)
        return await self._message_op(request, message)

    # -- channels -------------------------------------------------------------------------------------

    def _channel(self, request: web.Request) -> FakeChannel | None:
        return self.state.channels.get(int(request.match_info["cid"]))

    async def get_channel(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        return json_response(channel.payload()) if channel else error_response(404, "Unknown Channel", 10003)

    async def history(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if channel is None:
            return error_response(404, "Unknown Channel", 10003)
        messages = self.state.channel_messages(channel.id)
        before, after = request.query.get("before"), request.query.get("after")
        if before:
            messages = [m for m in messages if m.id < int(before)]
        if after:
            messages = [m for m in messages if m.id > int(after)]
        limit = int(request.query.get("limit", 50))
        newest_first = list(reversed(messages))[:limit]
        return json_response([m.payload(self.state.users) for m in newest_first])

    async def send(self, request: web.Request) -> web.Response:
        channel = self._channel(request)
        if channel is None:
            return error_response(404, "Unknown Channel", 10003)
        payload, uploads = await read_body(request)
        if not (payload.get("content") or payload.get("embeds") or uploads or payload.get("components")):
            return error_response(400, "Cannot send an empty message", 50006)
        message = self.state.message_for_nonce(self.state.bot_user, payload)
        if message is None:
            message = self.state.create_message(channel.id, payload, uploads)
            self.state.remember_nonce(message, payload)
        return json_response({**message.payload(self.state.users), "nonce": message.nonce})

    async def channel_message(self, request: web.Request) -> web.Response:
        message = self.state.messages.get(int(request.match_info["mid"]))
        if message is None or message.deleted or str(message.channel_id) != request.match_info["cid"]:
            return error_response(404, "Unknown Message", 10008)
        if request.method == "PATCH":
            too_many, headers = self.state.faults.check_edit(message.channel_id, request.path[len(API) :])
            if too_many is not None:
                await read_body(request)
                return too_many
            response = await self._message_op(request, message)
            response.headers.update(headers)
            return response
        return await self._message_op(request, message)

    async def _message_op(self, request: web.Request, message: FakeMessage) -> web.Response:
        state = self.state
        if request.method == "DELETE":
            state.delete_message(message)
            return json_response(None, 204)
        if request.method == "PATCH":
            payload, uploads = await read_body(request)
            state.edit_message(message, payload, uploads)
        return json_response(message.payload(state.users))
