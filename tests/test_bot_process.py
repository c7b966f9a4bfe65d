"""The bot process: `qlora-bot run` without a token, the serve loop against the fake Discord, logging."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys

from bot.config import Secrets
from bot.logging_setup import RedactSecrets, setup_logging
from bot.run_command import serve
from tests.discord_helpers import bot_config
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture
from tests.service_helpers import fake_data_checker, fake_executor


def test_run_without_a_token_says_how_to_create_the_bot(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "QLORA_BOT_HOME": str(tmp_path), "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "bot"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    for needed in ("DISCORD_TOKEN is not set", "Reset Token", "applications.commands", "privileged intents"):
        assert needed in result.stderr


async def test_serve_runs_bot_and_queue_until_stopped(fake_discord, tmp_path):
    fake = fake_discord
    config = bot_config(tmp_path, fake, base_models=("fake/model",))
    stop = asyncio.Event()
    secrets = Secrets(discord_token=fake.bot_token)
    task = asyncio.create_task(
        serve(
            config,
            secrets,
            fake_executor(),
            stop=stop,
            data_checker=fake_data_checker(config),
            guild_ready_timeout=0.1,
        )
    )
    await fake.wait_ready(timeout=20)
    assert {command["name"] for command in fake.commands(fake.guild_id)} >= {
        "finetune",
        "jobs",
        "job",
        "cancel",
        "queue",
        "adapters",
    }
    call = await fake.slash("queue", {})
    [answer] = await call.wait_followups(1)
    assert "Nothing running or waiting." in answer.embeds[0]["description"]
    stop.set()
    await asyncio.wait_for(task, 20)


async def test_commands_are_synced_only_when_they_changed(fake_discord, tmp_path):
    fake = fake_discord
    config = bot_config(tmp_path, fake, base_models=("fake/model",))
    for expected_syncs in (1, 1):  # the second start finds the stored hash unchanged
        stop = asyncio.Event()
        task = asyncio.create_task(
            serve(
                config,
                Secrets(discord_token=fake.bot_token),
                fake_executor(),
                stop=stop,
                guild_ready_timeout=0.1,
            )
        )
        await fake.wait_for(lambda: fake.sessions, timeout=20)
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(task, 20)
        assert fake.command_syncs == expected_syncs
    assert (tmp_path / "discord-commands.sha256").is_file()


def test_logs_never_carry_tokens(tmp_path):
    token = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbCdE.abcdefghijklmnopqrstuvwxyz0123456789"
    path = setup_logging(tmp_path / "logs", [token, "hf_supersecretvalue123"], verbose=True)
    log = logging.getLogger("discord.http")
    log.debug("POST https://discord.com/api/v10/interactions/123/aW50ZXJhY3Rpb246MTIz/callback")
    log.debug("PATCH https://discord.com/api/v10/webhooks/55/aW50ZXJhY3Rpb24tdG9rZW4/messages/@original")
    log.info("Authorization: Bot %s", token)
    log.warning("hub said hf_supersecretvalue123 is invalid")
    for handler in logging.getLogger().handlers:
        handler.flush()
    text = path.read_text()
    assert "aW50ZXJhY3Rpb246MTIz" not in text and "aW50ZXJhY3Rpb24tdG9rZW4" not in text
    assert token not in text and "hf_supersecretvalue123" not in text
    assert "/interactions/123/[token]/callback" in text and "[secret] is invalid" in text
    assert RedactSecrets([None, "short"]).secrets == []  # nothing to mask, nothing masked by accident
