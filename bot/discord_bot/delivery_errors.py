"""What a failed Discord request means for the message it carried: give up on it (permanent), or try
again later, and not before Discord's Retry-After."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
import discord

# Errors that no retry can fix for this message (https://discord.com/developers/docs/topics/opcodes-and-status-codes).
# Other 4xx answers are permanent too: the request itself is wrong, and sending it again changes nothing.
PERMANENT_CODES = {
    10003: "Unknown Channel",
    10008: "Unknown Message",  # the status message was deleted: nothing left to edit
    50001: "Missing Access",
    50013: "Missing Permissions",
    50035: "Invalid Form Body",
}
# 401 is about the bot, not the message: an invalid token fails every request, so the message waits
# (and is sent once the token is fixed) instead of being given up. 408 and 429 pass with time.
NOT_PERMANENT_STATUSES = {401, 408, 429}


@dataclass(frozen=True)
class Verdict:
    permanent: bool
    reason: str  # shown in /job and logged: Discord's words and code, never a URL or a token
    code: int | None = None  # Discord's JSON error code, when it gave one
    retry_after: float | None = None  # seconds Discord asked us to wait
    bad_token: bool = False
    internal: bool = False  # not Discord's answer but our bug: logged with its traceback


def judge(error: BaseException) -> Verdict:
    """How to treat the exception a send or an edit raised."""
    if isinstance(error, discord.RateLimited):  # above the client's max_ratelimit_timeout, if set
        return Verdict(False, f"rate limited for {error.retry_after:.1f} s", retry_after=error.retry_after)
    if isinstance(error, discord.HTTPException):
        return _judge_http(error)
    if isinstance(error, (aiohttp.ClientError, OSError)):  # TimeoutError is an OSError
        return Verdict(False, f"Discord could not be reached ({type(error).__name__})")
    return Verdict(False, f"an internal error ({type(error).__name__})", internal=True)


def _judge_http(error: discord.HTTPException) -> Verdict:
    code = error.code or None
    text = error.text or PERMANENT_CODES.get(error.code, "") or f"HTTP {error.status}"
    reason = f"{text} ({code})" if code else f"{text} (HTTP {error.status})"
    if error.status == 429:
        # discord.py waits out an ordinary 429 itself; it raises for one it cannot trust (no Via header:
        # Cloudflare's, after too many invalid requests), whose Retry-After header still says how long.
        return Verdict(False, reason, code, retry_after=_retry_after(error))
    if error.status == 401:
        return Verdict(False, reason, code, bad_token=True)
    permanent = code in PERMANENT_CODES or (
        400 <= error.status < 500 and error.status not in NOT_PERMANENT_STATUSES
    )
    return Verdict(permanent, reason, code)


def _retry_after(error: discord.HTTPException) -> float | None:
    headers = getattr(error.response, "headers", None) or {}
    for name in ("Retry-After", "X-RateLimit-Reset-After"):
        try:
            return max(float(headers[name]), 0.0)
        except (KeyError, TypeError, ValueError):
            continue
    return None


def backoff_s(tries: int, base_s: float, max_s: float, retry_after: float | None) -> float:
    """The wait before the next try, after `tries` failed ones (this one included): doubling from
    base_s up to max_s, and never shorter than Discord's Retry-After (which may exceed max_s: coming
    back earlier only earns another 429)."""
    wait = min(base_s * 2 ** max(tries - 1, 0), max_s)
    return max(wait, retry_after or 0.0)
