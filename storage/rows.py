"""Turning SQLite rows into the frozen models, and the shared WHERE clause of the job listings."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

from protocol.events import decode_event
from protocol.job_spec import JobSpec
from storage.models import JOB_STATES, Adapter, Attempt, Job, StoredEvent


def to_job(row: sqlite3.Row) -> Job:
    fields = dict(row)
    fields["spec"] = JobSpec.from_json(fields["spec"])
    fields["push_requested"] = bool(fields["push_requested"])
    fields["hub_private"] = bool(fields["hub_private"])
    return Job(**fields)


def to_attempt(row: sqlite3.Row) -> Attempt:
    return Attempt(**dict(row))


def to_event(row: sqlite3.Row) -> StoredEvent:
    return StoredEvent(row["id"], row["job_id"], row["attempt"], row["created_at"], decode_event(row["body"]))


def to_adapter(row: sqlite3.Row) -> Adapter:
    fields = dict(row)
    del fields["id"]  # a storage detail: adapters are known by name
    return Adapter(**fields)


def job_filter(
    *, owner: str | None = None, states: Sequence[str] | None = None, since: float | None = None
) -> tuple[str, tuple[Any, ...]]:
    """A WHERE clause (or "") and its parameters for the job listings and counts."""
    clauses: list[str] = []
    params: list[Any] = []
    if owner is not None:
        clauses.append("owner = ?")
        params.append(owner)
    if states is not None:
        unknown = sorted(set(states) - set(JOB_STATES))
        if unknown:  # a typo would otherwise silently match nothing
            raise ValueError(f"unknown job state(s) {unknown} (known: {', '.join(JOB_STATES)})")
        clauses.append(f"state IN ({marks(states)})" if states else "0")
        params.extend(states)
    if since is not None:
        clauses.append("created_at >= ?")
        params.append(since)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def marks(values: Sequence[Any]) -> str:
    """The placeholders of an IN list: "?, ?, ?" for three values."""
    return ", ".join("?" * len(values))
