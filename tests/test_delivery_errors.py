"""bot/discord_bot/delivery_errors.py: which Discord failures give a message up, and how long a retry
waits. The exceptions are discord.py's own, built from responses shaped like aiohttp's."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
import discord
import pytest

from bot.discord_bot.delivery_errors import backoff_s, judge


def http_error(status: int, code: int = 0, message: str = "", headers: dict[str, str] | None = None):
    response = SimpleNamespace(status=status, reason="Reason", headers=headers or {})
    kind = {403: discord.Forbidden, 404: discord.NotFound}.get(status, discord.HTTPException)
    if status >= 500:
        kind = discord.DiscordServerError
    return kind(response, {"message": message, "code": code})


@pytest.mark.parametrize(
    ("status", "code", "message"),
    [
        (404, 10003, "Unknown Channel"),
        (404, 10008, "Unknown Message"),
        (403, 50001, "Missing Access"),
        (403, 50013, "Missing Permissions"),
        (400, 50035, "Invalid Form Body"),
    ],
)
def test_errors_no_retry_can_fix_give_the_message_up(status, code, message):
    verdict = judge(http_error(status, code, message))
    assert verdict.permanent and (verdict.code, verdict.reason) == (code, f"{message} ({code})")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408])
def test_server_errors_and_timeouts_are_retried(status):
    verdict = judge(http_error(status, message="Service Unavailable"))
    assert not verdict.permanent and verdict.retry_after is None
    assert verdict.reason == f"Service Unavailable (HTTP {status})"


def test_a_bad_token_is_not_the_message_s_fault():
    verdict = judge(http_error(401, 0, "401: Unauthorized"))
    assert not verdict.permanent and verdict.bad_token


def test_rate_limits_say_how_long_to_wait():
    cloudflare = judge(http_error(429, message="You are being blocked", headers={"Retry-After": "7"}))
    assert (cloudflare.permanent, cloudflare.retry_after) == (False, 7.0)
    bucket = judge(http_error(429, headers={"X-RateLimit-Reset-After": "2.5"}))
    assert bucket.retry_after == 2.5
    assert judge(http_error(429)).retry_after is None
    limited = judge(discord.RateLimited(45.0))  # above the client's max_ratelimit_timeout
    assert (limited.permanent, limited.retry_after) == (False, 45.0)


def test_network_errors_are_retried_and_bugs_are_flagged():
    assert not judge(aiohttp.ClientConnectionError("refused")).permanent
    assert not judge(TimeoutError()).permanent
    bug = judge(KeyError("oops"))
    assert not bug.permanent and bug.internal and "KeyError" in bug.reason


def test_backoff_doubles_up_to_its_cap_and_never_undercuts_retry_after():
    assert [backoff_s(tries, 2.0, 30.0, None) for tries in range(1, 7)] == [2, 4, 8, 16, 30, 30]
    assert backoff_s(1, 2.0, 30.0, 10.0) == 10.0
    assert backoff_s(1, 2.0, 30.0, 600.0) == 600.0  # Discord's word beats our cap
