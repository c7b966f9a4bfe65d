"""Faults a test can inject into the fake Discord: 429s on channel edits (one-off or a standing
edit budget), arbitrary error statuses on any REST route, and slow routes.

The 429 carries what discord.py 2.7 checks before it retries (http.py, webhook/async_.py): a JSON body
with `retry_after`, and a `Via` header (without it discord.py assumes a Cloudflare ban and raises). A
route fault with status 429 is that other kind: Cloudflare's, with a Retry-After header and no Via.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """JSON with Content-Type exactly `application/json`: discord.py compares the header verbatim and
    treats anything else (a charset suffix included) as text."""
    if status == 204:
        return web.Response(status=204, headers=headers)
    return web.Response(
        body=json.dumps(data).encode(),
        status=status,
        headers={"Content-Type": "application/json", **(headers or {})},
    )


def error_response(
    status: int, message: str, code: int = 0, headers: dict[str, str] | None = None
) -> web.Response:
    return json_response({"message": message, "code": code}, status, headers)


# What Discord says with the JSON error codes tests inject most.
ERROR_MESSAGES = {
    10003: "Unknown Channel",
    10008: "Unknown Message",
    50001: "Missing Access",
    50013: "Missing Permissions",
}


@dataclass
class _RouteFault:
    method: str | None
    pattern: re.Pattern[str]
    status: int
    remaining: int
    code: int
    message: str
    retry_after: float | None


@dataclass
class _EditLimit:
    remaining: int
    retry_after: float
    code: int | None
    scope: str


class Faults:
    def __init__(self) -> None:
        self._route_faults: list[_RouteFault] = []
        self._slow_routes: list[tuple[str | None, re.Pattern[str], float]] = []
        self._edit_limits: dict[int, list[_EditLimit]] = {}
        self._budget: tuple[int, float] | None = None
        self._edit_times: dict[int, deque[float]] = {}
        self.injected: list[tuple[str, str, int]] = []  # (method, path, status) of every injected failure

    def fail_route(
        self,
        method: str | None,
        path_regex: str,
        status: int = 500,
        count: int = 1,
        *,
        code: int = 0,
        message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        """The next `count` requests whose path (without /api/v10) fully matches `path_regex`, and whose
        method matches (None: any), get `status` with {"message", "code"}; `retry_after` adds a
        Retry-After header (whole seconds, as HTTP has it). Note discord.py retries 500/502/504/524
        itself after sleeping 1 s, 3 s, ... (five tries, 25 s); 503 and 4xx (this 429 too) raise at once."""
        text = (
            message
            or ERROR_MESSAGES.get(code)
            or {
                429: "You are being blocked from accessing our API temporarily.",
                500: "500: Internal Server Error",
                503: "503: Service Unavailable",
            }.get(status, "error")
        )
        self._route_faults.append(
            _RouteFault(
                method and method.upper(), re.compile(path_regex), status, count, code, text, retry_after
            )
        )

    def clear_route_faults(self) -> None:
        """Discord is back: the route faults not used up yet are dropped (slow routes too)."""
        self._route_faults.clear()
        self._slow_routes.clear()

    def slow_route(self, method: str | None, path_regex: str, seconds: float) -> None:
        """Requests whose path fully matches take `seconds` longer to be answered (still answered)."""
        self._slow_routes.append((method and method.upper(), re.compile(path_regex), seconds))

    def route_delay(self, method: str, path: str) -> float:
        return sum(
            s for m, pattern, s in self._slow_routes if m in (None, method) and pattern.fullmatch(path)
        )

    def rate_limit_edits(
        self,
        channel_id: int,
        count: int = 1,
        retry_after: float = 0.2,
        *,
        code: int | None = None,
        scope: str = "user",
    ) -> None:
        """The next `count` PATCH edits of messages in the channel get 429 and are not applied.
        code=30046 mimics the budget for messages older than an hour."""
        self._edit_limits.setdefault(channel_id, []).append(_EditLimit(count, retry_after, code, scope))

    def set_edit_budget(self, limit: int | None = 5, per: float = 5.0) -> None:
        """A standing per-channel budget of `limit` edits per `per` seconds (Discord's is about 5 per
        5 s), announced in X-RateLimit-* headers; edits beyond it get 429. None removes it. With the
        headers discord.py sleeps on its own once Remaining hits 0, as against the real API."""
        self._budget = None if limit is None else (limit, per)
        self._edit_times.clear()

    def route_failure(self, method: str, path: str) -> web.Response | None:
        for fault in self._route_faults:
            if fault.remaining > 0 and fault.method in (None, method) and fault.pattern.fullmatch(path):
                fault.remaining -= 1
                self.injected.append((method, path, fault.status))
                headers = None
                if fault.retry_after is not None:
                    headers = {"Retry-After": str(math.ceil(fault.retry_after))}
                return error_response(fault.status, fault.message, fault.code, headers)
        return None

    def check_edit(self, channel_id: int, path: str) -> tuple[web.Response | None, dict[str, str]]:
        """Before an edit is applied: a 429 to send instead, or the rate-limit headers for success."""
        bucket = f"fake-edits-{channel_id}"
        for limit in self._edit_limits.get(channel_id, []):
            if limit.remaining > 0:
                limit.remaining -= 1
                self.injected.append(("PATCH", path, 429))
                return _too_many(bucket, 5, limit.retry_after, limit.code, limit.scope), {}
        if self._budget is None:
            return None, {}
        allowed, per = self._budget
        now = time.monotonic()
        times = self._edit_times.setdefault(channel_id, deque())
        while times and times[0] <= now - per:
            times.popleft()
        if len(times) >= allowed:
            self.injected.append(("PATCH", path, 429))
            return _too_many(bucket, allowed, times[0] + per - now, None, "user"), {}
        times.append(now)
        reset_after = times[0] + per - now
        return None, _limit_headers(bucket, allowed, allowed - len(times), reset_after)


def _limit_headers(bucket: str, limit: int, remaining: int, reset_after: float) -> dict[str, str]:
    return {
        "X-RateLimit-Bucket": bucket,
        "X-RateLimit-Limit": str(limit),
        "X-RateLimit-Remaining": str(remaining),
        "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}",
        "X-RateLimit-Reset-After": f"{reset_after:.3f}",
    }


def _too_many(bucket: str, limit: int, retry_after: float, code: int | None, scope: str) -> web.Response:
    body: dict[str, Any] = {
        "message": "You are being rate limited.",
        "retry_after": retry_after,
        "global": False,
    }
    if code is not None:
        body["code"] = code
    headers = {
        **_limit_headers(bucket, limit, 0, retry_after),
        "X-RateLimit-Scope": scope,
        "Retry-After": str(math.ceil(retry_after)),
        "Via": "1.1 google",
    }
    return json_response(body, 429, headers)
