"""The fake gateway: one websocket session per client connection, plain JSON text frames.

Flow (discord.py 2.7 gateway.py): HELLO -> the client heartbeats at once and sends IDENTIFY -> READY
(with resume_gateway_url) + GUILD_CREATE; HEARTBEAT -> HEARTBEAT_ACK; RESUME -> RESUMED or
INVALID_SESSION; REQUEST_GUILD_MEMBERS -> GUILD_MEMBERS_CHUNK. The client asks for zlib-stream
compression in the URL; text frames are accepted regardless, so we never compress.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

if TYPE_CHECKING:
    from tests.fake_discord.state import DiscordState

HEARTBEAT_INTERVAL_MS = 41250  # what Discord sends; the client beats well within its receive timeout


class GatewaySession:
    """One client connection. Outgoing frames go through a queue so dispatches keep their order."""

    def __init__(self, ws: web.WebSocketResponse, state: DiscordState) -> None:
        self.ws = ws
        self.state = state
        self.session_id = secrets.token_hex(16)
        self.seq = 0
        self.identify: dict[str, Any] | None = None  # the IDENTIFY payload's `d`
        self.intents = 0
        self.ready = False  # READY and GUILD_CREATE sent
        self.closed = False
        self.close_code: int | None = None
        self.received: list[dict[str, Any]] = []  # every frame the client sent
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._writer = asyncio.create_task(self._write())

    def queue_op(self, op: int, d: Any) -> None:
        self._outbox.put_nowait(json.dumps({"op": op, "d": d, "s": None, "t": None}))

    def queue_dispatch(self, event: str, d: Any) -> None:
        self.seq += 1
        self._outbox.put_nowait(json.dumps({"op": 0, "t": event, "s": self.seq, "d": d}))

    async def flush(self) -> None:
        await self._outbox.join()

    async def close(self, code: int = 1000) -> None:
        self._outbox.put_nowait(None)
        with contextlib.suppress(Exception):
            await self._writer
        await self.ws.close(code=code)

    async def _write(self) -> None:
        while True:
            frame = await self._outbox.get()
            try:
                if frame is None:
                    return
                if not self.ws.closed:
                    await self.ws.send_str(frame)
            except ConnectionError:
                pass
            finally:
                self._outbox.task_done()

    # -- incoming -------------------------------------------------------------------------------------

    async def handle(self, frame: dict[str, Any]) -> None:
        self.received.append(frame)
        op, d = frame.get("op"), frame.get("d")
        if op == 1:  # HEARTBEAT
            self.queue_op(11, None)
        elif op == 2:  # IDENTIFY
            await self._identify(d)
        elif op == 6:  # RESUME
            self._resume(d)
        elif op == 8:  # REQUEST_GUILD_MEMBERS
            self._members_chunk(d)
        # op 3 (presence) and op 4 (voice) are recorded only.

    async def _identify(self, d: dict[str, Any]) -> None:
        state = self.state
        if d.get("token") != state.bot_token:
            await self.close(4004)  # Authentication failed: discord.py raises instead of reconnecting
            return
        self.identify = d
        self.intents = int(d.get("intents") or 0)
        ready = {
            "v": 10,
            "user": state.bot_user.payload(),
            "guilds": [{"id": str(state.guild_id), "unavailable": True}],
            "session_id": self.session_id,
            "resume_gateway_url": state.base_url.replace("http://", "ws://") + "/gateway",
            "shard": [0, 1],
            "application": {"id": str(state.application_id), "flags": 0},
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "session_type": "normal",
            "geo_ordered_rtc_regions": [],
            "_trace": ["fake-discord"],
        }
        self.queue_dispatch("READY", ready)
        self.queue_dispatch("GUILD_CREATE", state.guild_payload())
        await self.flush()
        self.ready = True
        state.changed()

    def _resume(self, d: dict[str, Any]) -> None:
        old = next((s for s in self.state.sessions if s.session_id == d.get("session_id")), None)
        if old is None or d.get("token") != self.state.bot_token:
            self.queue_op(9, False)  # INVALID_SESSION, not resumable: the client re-identifies
            return
        self.session_id, self.seq, self.intents, self.identify = (
            old.session_id,
            old.seq,
            old.intents,
            old.identify,
        )
        self.queue_dispatch("RESUMED", {"_trace": ["fake-discord"]})
        self.ready = True
        self.state.changed()

    def _members_chunk(self, d: dict[str, Any]) -> None:
        state = self.state
        wanted = {int(u) for u in d.get("user_ids") or []}
        query = (d.get("query") or "").lower()
        members = [
            m.payload()
            for m in state.members.values()
            if (not wanted or m.id in wanted) and m.user.name.lower().startswith(query)
        ]
        chunk = {"guild_id": str(state.guild_id), "members": members, "chunk_index": 0, "chunk_count": 1}
        if d.get("nonce"):
            chunk["nonce"] = d["nonce"]
        self.queue_dispatch("GUILD_MEMBERS_CHUNK", chunk)


def gateway_handler(state: DiscordState) -> Callable[[web.Request], Awaitable[web.WebSocketResponse]]:
    async def handle(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        session = GatewaySession(ws, state)
        state.sessions.append(session)
        session.queue_op(10, {"heartbeat_interval": HEARTBEAT_INTERVAL_MS, "_trace": ["fake-discord"]})
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await session.handle(json.loads(msg.data))
                elif msg.type is WSMsgType.ERROR:
                    break
        finally:
            session.closed = True
            session.close_code = ws.close_code
            session._outbox.put_nowait(None)
            state.changed()
        return ws

    return handle
