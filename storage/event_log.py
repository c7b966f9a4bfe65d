"""The job's event log: every event a worker reported, stored in the order it came."""

from __future__ import annotations

from protocol.events import EVENT_TYPES, Event, decode_event, encode_event, event_type
from storage.models import StoredEvent
from storage.rows import to_event
from storage.store_part import StorePart, first


class EventLog(StorePart):
    """Part of the Store (storage/store.py): reached as `store.append_event(...)`, `store.events(...)`."""

    # Events

    async def append_event(self, job_id: int, attempt: int, event: Event) -> StoredEvent:
        body = encode_event(event)
        now = self._clock()
        async with self._db.transaction() as db:
            inserted = await db.execute_fetchall(
                "INSERT INTO events (job_id, attempt, created_at, type, body)"
                " VALUES (?, ?, ?, ?, ?) RETURNING id",
                (job_id, attempt, now, event_type(event), body),
            )
            if event_type(event) == "progress":  # the status message shows the newest step, loss and ETA
                await self.outbox.status_changed(db, job_id, now)
        # Decoded from what was stored (a NaN loss becomes None), so it equals what a later read returns.
        return StoredEvent(int(inserted[0]["id"]), job_id, attempt, now, decode_event(body))

    async def events(self, job_id: int, *, after_id: int = 0, limit: int | None = None) -> list[StoredEvent]:
        """The job's events with id > after_id, in the order they were stored."""
        found = await self._db.run(
            "SELECT * FROM events WHERE job_id = ? AND id > ? ORDER BY id LIMIT ?",
            (job_id, after_id, -1 if limit is None else limit),  # LIMIT -1: no limit
        )
        return [to_event(row) for row in found]

    async def last_event(self, job_id: int, type_name: str) -> StoredEvent | None:
        """The job's newest event of this type (e.g. "progress")."""
        if type_name not in EVENT_TYPES:
            raise ValueError(f"unknown event type {type_name!r} (known: {', '.join(EVENT_TYPES)})")
        found = await self._db.run(
            "SELECT * FROM events WHERE job_id = ? AND type = ? ORDER BY id DESC LIMIT 1",
            (job_id, type_name),
        )
        return first(to_event, found)
