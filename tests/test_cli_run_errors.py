"""`qlora-bot run` when Discord cannot be used: one line that says which (a rejected token, no route),
a non-zero exit, no traceback, no token; and none of discord.py's voice-support warnings."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
from pathlib import Path

import discord

from bot.cli.discord_failures import VOICE_WARNINGS, quiet_voice_warnings
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture
from tests.worker_helpers import worker_env

# The real entry point, in its own process, with discord.py's REST base pointed where the test says.
LAUNCH = (
    "import sys, discord.http; discord.http.Route.BASE = sys.argv[1]; "
    "from bot.cli.main import main; sys.exit(main(['run']))"
)
WRONG_TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GAbCdE.wrongwrongwrongwrongwrongwrong0123"


async def run_command(api_base: str, home: Path) -> tuple[int, str]:
    env = {**worker_env(), "QLORA_BOT_HOME": str(home), "DISCORD_TOKEN": WRONG_TOKEN}
    env.pop("HF_TOKEN", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        LAUNCH,
        api_base,
        env=env,
        cwd=home.parent,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode is not None
    return process.returncode, output.decode()


def assert_one_clean_line(output: str) -> str:
    assert "Traceback" not in output, output
    assert WRONG_TOKEN not in output and "wrongwrong" not in output
    assert "voice will NOT be supported" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert [line for line in lines if not line.startswith("qlora-bot: logging to ")] == lines[-1:], output
    return lines[-1]


async def test_a_rejected_token_says_so_in_one_line(fake_discord, tmp_path):
    assert fake_discord.bot_token != WRONG_TOKEN  # the fake answers 401 to any other token
    code, output = await run_command(fake_discord.api_base, tmp_path / "home")
    line = assert_one_clean_line(output)
    assert code == 2
    assert line.startswith("qlora-bot: Discord rejected DISCORD_TOKEN (401 Unauthorized); reset the token")
    assert any(request.status == 401 for request in fake_discord.requests)  # it did ask Discord


async def test_no_route_to_discord_says_cannot_reach(tmp_path):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, output = await run_command(f"http://127.0.0.1:{port}/api/v10", tmp_path / "home")
    line = assert_one_clean_line(output)
    assert code == 1
    assert line.startswith(f"qlora-bot: cannot reach Discord (Cannot connect to host 127.0.0.1:{port}")
    assert line.endswith("check the network, DNS or proxy, then run again")


def test_only_the_voice_warnings_are_filtered(caplog):
    caplog.set_level(logging.WARNING, logger="discord.client")
    quiet_voice_warnings()
    quiet_voice_warnings()  # idempotent: one filter
    logger = logging.getLogger("discord.client")
    assert len([f for f in logger.filters if type(f).__name__ == "_DropVoiceWarnings"]) == 1
    discord.Client(intents=discord.Intents.none())  # logs them when PyNaCl / davey are missing
    logger.warning("another warning of the same logger")
    messages = [record.getMessage() for record in caplog.records if record.name == "discord.client"]
    assert messages == ["another warning of the same logger"]
    assert not set(VOICE_WARNINGS) & set(messages)
