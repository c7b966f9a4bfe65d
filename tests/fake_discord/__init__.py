"""A loopback fake of Discord's REST and gateway API that the real discord.py client connects to.

async with fake.running(bot):                 # fake: the `fake_discord` fixture
    call = await fake.slash("finetune", {"r": 16}, attachments=[("d.jsonl", b"...", "application/json")])
    await call.wait_response()
    await fake.wait_for(lambda: fake.channel_messages())
"""

from tests.fake_discord.interaction import FakeInteraction
from tests.fake_discord.models import (
    FakeAttachment,
    FakeChannel,
    FakeMember,
    FakeMessage,
    FakeRole,
    FakeUser,
    MessageVersion,
    RequestRecord,
)
from tests.fake_discord.server import FakeDiscord

__all__ = [
    "FakeAttachment",
    "FakeChannel",
    "FakeDiscord",
    "FakeInteraction",
    "FakeMember",
    "FakeMessage",
    "FakeRole",
    "FakeUser",
    "MessageVersion",
    "RequestRecord",
]
