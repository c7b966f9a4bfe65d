"""What `qlora-bot run` says when it cannot use Discord (a rejected token, no route to it), in one line
without a traceback; and discord.py's voice warnings, which a bot without voice features never needs."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import aiohttp
import discord

# discord.py logs these through `discord.client` at WARNING whenever a Client is made (client.py); this
# bot never joins a voice channel, so they only alarm. Every other record of that logger passes.
VOICE_WARNINGS = (
    "PyNaCl is not installed, voice will NOT be supported",
    "davey is not installed, voice will NOT be supported",
)


class DiscordUnusable(Exception):
    """Discord cannot be used as configured: the message says why and what to do (never the token)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@contextlib.contextmanager
def discord_failures() -> Iterator[None]:
    """Login and connection failures as DiscordUnusable; anything else propagates as it is."""
    try:
        yield
    except discord.LoginFailure:
        # discord.py raises it for a 401 on login (GET /users/@me); its own text says "Improper token".
        raise DiscordUnusable(
            "Discord rejected DISCORD_TOKEN (401 Unauthorized); reset the token in the Developer Portal "
            "(your application -> Bot -> Reset Token) and export the new one",
            2,
        ) from None
    except discord.PrivilegedIntentsRequired:
        raise DiscordUnusable(
            "Discord refused an intent this bot asked for (close code 4014); qlora-bot needs no privileged "
            "intents, so check the bot's code or settings",
            2,
        ) from None
    except (aiohttp.ClientConnectionError, OSError, TimeoutError) as error:
        raise DiscordUnusable(
            f"cannot reach Discord ({_reason(error)}); check the network, DNS or proxy, then run again", 1
        ) from None


def _reason(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class _DropVoiceWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in VOICE_WARNINGS


_FILTER = _DropVoiceWarnings()


def quiet_voice_warnings() -> None:
    """Idempotent: the filter is added to the `discord.client` logger once."""
    logger = logging.getLogger("discord.client")
    if _FILTER not in logger.filters:
        logger.addFilter(_FILTER)
