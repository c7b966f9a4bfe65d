"""When a status message may be edited next: per message, and a budget shared by a channel.

Discord allows about 5 edits per 5 s per channel and fewer on messages older than an hour (FACTS.md);
discord.py waits silently when a bucket is empty. We never ask for more than this budget allows, so
edits never queue up behind each other and the newest state always goes out next.
"""

from __future__ import annotations

from collections import defaultdict, deque

HOUR_S = 3600.0
WINDOW_S = 60.0


class EditBudget:
    def __init__(self, interval_s: float, old_interval_s: float, channel_edits_per_minute: int) -> None:
        self.interval_s = interval_s
        self.old_interval_s = old_interval_s
        self.channel_edits_per_minute = channel_edits_per_minute
        self._last_edit: dict[int, float] = {}
        self._channel_edits: dict[int, deque[float]] = defaultdict(deque)

    def next_allowed(self, channel_id: int, message_id: int, message_created_at: float, now: float) -> float:
        """The earliest time (same clock as `now`) at which this message may be edited."""
        interval = self.old_interval_s if now - message_created_at >= HOUR_S else self.interval_s
        last = self._last_edit.get(message_id)
        earliest = now if last is None else max(now, last + interval)
        recent = self._recent(channel_id, now)
        if len(recent) >= self.channel_edits_per_minute:
            earliest = max(earliest, recent[len(recent) - self.channel_edits_per_minute] + WINDOW_S)
        return earliest

    def record(self, channel_id: int, message_id: int, now: float) -> None:
        self._last_edit[message_id] = now
        self._channel_edits[channel_id].append(now)

    def _recent(self, channel_id: int, now: float) -> deque[float]:
        edits = self._channel_edits[channel_id]
        while edits and edits[0] <= now - WINDOW_S:
            edits.popleft()
        return edits
