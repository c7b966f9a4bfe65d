"""The bot process: `qlora-bot run` without a token, the serve loop against the fake Discord, logging."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys

import pytest

from bot.cli.main import main
from bot.cli.run import serve
from bot.config import Secrets
from bot.logging_setup import RedactSecrets, setup_logging
from tests.discord_helpers import bot_config, running_bot
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture
from tests.fake_discord.server import FakeDiscord
from tests.service_helpers import fake_data_checker, fake_executor

# Shaped like a real bot token (three dot-separated parts), so the header and env rules both apply.
BOT_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbCdE.abcdefghijklmnopqrstuvwxyz0123456789"
HF_TOKEN = "hf_supersecretvalue123"


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


@pytest.fixture
def root_logging(capsys):
    """Lets a test set up logging as a process entry does; the root logger is restored after (before
    capsys closes the stream the handlers write to)."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    yield root
    for handler in root.handlers:
        if handler not in saved[0]:
            handler.close()
    root.handlers[:], root.level = saved[0], saved[1]


def test_logs_never_carry_tokens(tmp_path, root_logging):
    token = BOT_TOKEN
    path = setup_logging(tmp_path / "logs", [token, HF_TOKEN], verbose=True)
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


def test_every_part_of_a_record_is_masked_at_every_level(tmp_path, root_logging, capsys):
    path = setup_logging(tmp_path / "logs", [BOT_TOKEN, HF_TOKEN], verbose=True)
    log = logging.getLogger("discord.gateway")
    body = {"t": "INTERACTION_CREATE", "d": {"id": "1", "token": "itok-dictrepr", "tokens_per_s": 5}}
    log.debug("For Shard ID %s: WebSocket Event: %s", None, body)  # discord.py's own call
    log.info("raw frame %s", json.dumps({"d": {"token": "itok-json", "x": 1}}))
    log.warning("GET /callback?token=itok-query&page=2 with Authorization: Bearer %s", HF_TOKEN)
    try:
        raise RuntimeError(f"webhook said no to {BOT_TOKEN} and 'token': 'itok-exc'")
    except RuntimeError:
        log.exception("failed")  # ERROR, with the secret only in the exception text
    log.critical("stack", stack_info=True, extra={"unused": BOT_TOKEN})
    for handler in logging.getLogger().handlers:
        handler.flush()
    written = {"file": path.read_text(), "console": capsys.readouterr().err}
    for where, text in written.items():
        for secret in (BOT_TOKEN, HF_TOKEN, "itok-dictrepr", "itok-json", "itok-query", "itok-exc"):
            assert secret not in text, (where, secret)
        assert "'token': '[token]', 'tokens_per_s': 5" in text  # the key's neighbours are left alone
        assert '"token": "[token]"' in text and "token=[token]&page=2" in text
        assert "RuntimeError: webhook said no to [secret]" in text and "Traceback" in text


async def test_a_real_interaction_at_debug_leaves_no_token_in_the_log(
    tmp_path, root_logging, capsys, monkeypatch
):
    fake = await FakeDiscord(bot_token=BOT_TOKEN).start()
    fake.patch(monkeypatch)
    path = setup_logging(tmp_path / "logs", [BOT_TOKEN], verbose=True)  # as `qlora-bot run -v` does
    try:
        async with running_bot(fake, bot_config(tmp_path, fake, base_models=("fake/model",))):
            call = await fake.slash("queue", {})
            [answer] = await call.wait_followups(1)
    finally:
        await fake.stop()
    for handler in logging.getLogger().handlers:
        handler.flush()
    written = {"file": path.read_text(), "console": capsys.readouterr().err}
    assert "Nothing running or waiting." in answer.embeds[0]["description"]
    for where, text in written.items():
        # The path was exercised: discord.py logged the gateway event that carries the token.
        assert "WebSocket Event" in text and "INTERACTION_CREATE" in text, where
        assert call.token not in text and BOT_TOKEN not in text, where
        assert "'token': '[token]'" in text, where


def test_the_cli_masks_its_debug_log_too(tmp_path, root_logging, monkeypatch, capsys):
    monkeypatch.setenv("QLORA_BOT_HOME", str(tmp_path))
    monkeypatch.setenv("DISCORD_TOKEN", BOT_TOKEN)
    monkeypatch.setenv("HF_TOKEN", "hf_cliSecretToken0123456789")
    assert main(["jobs", "-v"]) == 0
    log = logging.getLogger("discord.gateway")
    log.debug("event %s", {"token": "itok-cli", "id": "1"})
    log.debug("identify with %s, hub %s", BOT_TOKEN, "hf_cliSecretToken0123456789")
    err = capsys.readouterr().err
    assert "'token': '[token]'" in err and "identify with [secret]" in err  # -v: debug lines shown
    for secret in ("itok-cli", BOT_TOKEN, "hf_cliSecretToken0123456789"):
        assert secret not in err
