"""FakeDiscord: a loopback Discord (REST + gateway) for the real discord.py client, and the handle
tests drive it with. Start it, point discord.py at it (patch()/patched()), run a bot (running())."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import discord
import discord.gateway
import discord.http
import pytest
import yarl
from aiohttp import web

from tests.fake_discord.driver import InteractionDriver
from tests.fake_discord.gateway import GatewaySession, gateway_handler
from tests.fake_discord.rest import API, RestApi


class FakeDiscord(InteractionDriver):
    """One application with one bot user in one guild (#general plus any channels you add)."""

    def __init__(self, *, bot_token: str = "fake-bot-token", ack_deadline: float | None = 3.0) -> None:
        super().__init__(bot_token=bot_token, ack_deadline=ack_deadline)
        self._runner: web.AppRunner | None = None

    # -- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> FakeDiscord:
        rest = RestApi(self)
        app = web.Application(middlewares=[rest.middleware], client_max_size=64 * 1024 * 1024)
        app.add_routes([web.get("/gateway", gateway_handler(self)), *rest.routes()])
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.base_url = f"http://{host}:{port}"
        return self

    async def stop(self) -> None:
        for session in self.sessions:
            if not session.closed:
                await session.close(1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def api_base(self) -> str:
        return self.base_url + API

    @property
    def gateway_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/gateway"

    def patch(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point discord.py's REST routes (webhooks included) and gateway at this fake."""
        monkeypatch.setattr(discord.http.Route, "BASE", self.api_base)
        monkeypatch.setattr(discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(self.gateway_url))

    @contextlib.contextmanager
    def patched(self) -> Iterator[FakeDiscord]:
        """patch() without pytest: restores discord.py's URLs on exit."""
        old = discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)
        try:
            yield self
        finally:
            discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = old

    # -- running a bot --------------------------------------------------------------------------------

    async def wait_ready(
        self, timeout: float = 10.0, *, commands: bool = True, sessions: int = 1
    ) -> GatewaySession:
        """Wait until `sessions` clients have identified, the latest is live (READY and GUILD_CREATE
        sent) and, with commands=True, commands were synced at least once. Returns the session."""

        def ready() -> GatewaySession | None:
            live = [s for s in self.sessions if s.identify is not None]
            if len(live) < sessions or not live[-1].ready or live[-1].closed:
                return None
            return live[-1] if self.command_syncs or not commands else None

        return await self.wait_for(ready, timeout, what="the bot to identify and sync its commands")

    @contextlib.asynccontextmanager
    async def running(
        self, bot: discord.Client, *, timeout: float = 10.0, commands: bool = True
    ) -> AsyncIterator[discord.Client]:
        """Start `bot` against the fake, wait until it is connected and ready (the fake sent READY and
        GUILD_CREATE, commands synced, the client fired on_ready), yield it; on exit close it and wait
        for its gateway connection to end. A bot crash surfaces here as its exception.
        Build bots with guild_ready_timeout=0.1: discord.py waits that long after GUILD_CREATE before
        on_ready (default 2 s)."""
        before = len([s for s in self.sessions if s.identify is not None])
        task = asyncio.create_task(bot.start(self.bot_token), name="fake-discord-bot")
        try:
            await _unless_crashed(task, self.wait_ready(timeout, commands=commands, sessions=before + 1))
            await _unless_crashed(task, asyncio.wait_for(bot.wait_until_ready(), timeout))
            yield bot
        finally:
            await bot.close()
            try:
                await asyncio.wait_for(task, timeout)
            finally:
                await self.wait_for(
                    lambda: all(s.closed for s in self.sessions),
                    timeout,
                    what="the bot's gateway connection to close",
                )

    # -- faults (see faults.Faults) -------------------------------------------------------------------

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the bot's gateway connection as an outage would. discord.py reconnects to the READY's
        resume_gateway_url and RESUMEs; the fake answers RESUMED on a new session."""
        await self.live_session().close(code)

    def rate_limit_edits(
        self, channel_id: int, count: int = 1, retry_after: float = 0.2, *, code: int | None = None
    ) -> None:
        """The next `count` message edits in the channel get 429 (not applied); discord.py retries."""
        self.faults.rate_limit_edits(channel_id, count, retry_after, code=code)

    def set_edit_budget(self, limit: int | None = 5, per: float = 5.0) -> None:
        self.faults.set_edit_budget(limit, per)

    def fail_route(
        self,
        method: str | None,
        path_regex: str,
        status: int = 500,
        count: int = 1,
        *,
        code: int = 0,
        retry_after: float | None = None,
    ) -> None:
        self.faults.fail_route(method, path_regex, status, count, code=code, retry_after=retry_after)


async def _unless_crashed(task: asyncio.Task[Any], waiter: Any) -> Any:
    """Await `waiter`, but if the bot task ends first, raise what it raised."""
    wait = asyncio.ensure_future(waiter)
    done, _ = await asyncio.wait({task, wait}, return_when=asyncio.FIRST_COMPLETED)
    if wait in done:
        return wait.result()
    wait.cancel()
    task.result()  # raises the bot's exception
    raise RuntimeError("the bot stopped before it was ready")
