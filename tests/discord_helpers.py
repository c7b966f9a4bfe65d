"""Run the real QloraBot and JobService against the fake Discord, with the fake or the real trainer."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import discord.http
import pytest

from bot.config import Config, DiscordConfig, LimitsConfig, PathsConfig, QueueConfig, WorkerConfig
from bot.discord_bot.client import QloraBot
from bot.hub.access import HubAccess
from bot.jobs.executor import LocalExecutor
from bot.jobs.scheduler import build_slots
from bot.jobs.service import JobService
from bot.workers.serve_worker import ServeClient
from storage.store import Store
from tests.fake_discord.server import FakeDiscord
from tests.service_helpers import fake_data_checker, fake_executor

EDIT_INTERVAL_S = 0.5
OUTBOX_BACKOFF_S = 0.05


def bot_config(
    data_dir: Path, fake: FakeDiscord, base_models: tuple[str, ...], **sections: dict[str, Any]
) -> Config:
    discord_config = DiscordConfig(
        guild_ids=(fake.guild_id,),
        status_edit_interval_s=EDIT_INTERVAL_S,
        old_status_edit_interval_s=EDIT_INTERVAL_S * 4,
        channel_edits_per_minute=120,
        outbox_poll_s=0.5,
        outbox_backoff_s=OUTBOX_BACKOFF_S,
        outbox_max_backoff_s=0.5,
    )
    return Config(
        paths=PathsConfig(data_dir=str(data_dir)),
        worker=WorkerConfig(cancel_grace_s=10.0),
        queue=dataclasses.replace(QueueConfig(), **sections.get("queue", {})),
        discord=dataclasses.replace(discord_config, **sections.get("discord", {})),
        limits=dataclasses.replace(LimitsConfig(base_models=base_models), **sections.get("limits", {})),
    )


@contextlib.asynccontextmanager
async def running_bot(
    fake: FakeDiscord,
    config: Config,
    executor: LocalExecutor | None = None,
    *,
    hub: HubAccess | None = None,
    serve_client: ServeClient | None = None,
) -> AsyncIterator[tuple[QloraBot, JobService]]:
    async with await Store.open(config.database_path(), jobs_dir=config.jobs_dir()) as store:
        service = JobService(store, config, hub=hub, data_checker=fake_data_checker(config))
        await service.start_runner(executor or fake_executor(), build_slots([], 1))
        bot = QloraBot(config=config, service=service, serve_client=serve_client, guild_ready_timeout=0.1)
        try:
            async with fake.running(bot):
                yield bot, service
        finally:
            await service.close()


def fake_dataset(behaviour: str) -> tuple[str, bytes, str]:
    """An attachment that tells the fake trainer how to behave (see tests/fakes/fake_trainer.py)."""
    return ("data.jsonl", json.dumps({"fake": behaviour}).encode() + b"\n", "application/json")


def embed_field(message: Any, name: str) -> str | None:
    for embed in message.embeds:
        for field in embed.get("fields", []):
            if field["name"] == name:
                return field["value"]
    return None


class _QuickRetries:
    """Stands in for the asyncio module inside discord.http, where the pauses between discord.py's own
    retries of a 500 (1, 3, 5, 7 and 9 s: 25 s before it gives up) are the only int-valued sleeps; they
    shrink a hundredfold, so a test sees discord.py give up on five 500s in a quarter of a second.
    Float sleeps (a 429's retry_after, a bucket's reset) keep their length."""

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    @staticmethod
    async def sleep(delay: float, result: Any = None) -> Any:
        return await asyncio.sleep(delay / 100 if isinstance(delay, int) else delay, result)


def quick_5xx_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discord.http, "asyncio", _QuickRetries())
