"""The `fake_discord` pytest fixture: a started FakeDiscord with discord.py pointed at it.

A test module enables it by importing `fake_discord_fixture` (the fixture's name is `fake_discord`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fake_discord.server import FakeDiscord


@pytest.fixture(name="fake_discord")
async def fake_discord_fixture(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FakeDiscord]:
    fake = await FakeDiscord().start()
    fake.patch(monkeypatch)
    try:
        yield fake
    finally:
        await fake.stop()
