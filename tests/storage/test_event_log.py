"""storage/event_log.py: events stored in order with their attempts, paged and read back as they were
sent (a NaN loss as None)."""

from __future__ import annotations

import math

import pytest

from protocol.events import Checkpoint, Done, Error, Phase, Progress, Started
from storage.store import Store
from tests.storage.helpers import FakeClock, new_job, running_job


async def test_events_round_trip_in_order_with_their_attempts(store: Store, clock: FakeClock):
    job = await running_job(store)
    sent = [
        (1, Started(pid=10)),
        (1, Phase(name="training")),
        (1, Progress(step=1, total_steps=4, epoch=0.25, tokens_seen=512, tokens_per_s=100.0, loss=2.5)),
        (1, Checkpoint(step=2, path="/ckpt-2")),
        (2, Started(pid=11, attempt_resumes_from="/ckpt-2")),
        (2, Progress(step=3, total_steps=4, epoch=0.75, tokens_seen=1536, tokens_per_s=90.0, loss=1.5)),
        (2, Done(adapter_dir="/adapter", metrics={"train_loss": 1.7})),
    ]
    stored = []
    for attempt, event in sent:
        clock.advance(1)
        stored.append(await store.append_event(job.id, attempt, event))
    other = await new_job(store)
    await store.append_event(other.id, 1, Error(kind="internal", message="boom"))

    events = await store.events(job.id)
    assert events == stored
    assert [(item.attempt, item.event) for item in events] == sent
    assert [item.id for item in events] == sorted(item.id for item in events)
    assert [item.type for item in events] == [
        "started",
        "phase",
        "progress",
        "checkpoint",
        "started",
        "progress",
        "done",
    ]
    assert events[0].created_at < events[-1].created_at

    page = await store.events(job.id, after_id=events[2].id, limit=2)
    assert page == events[3:5]
    assert await store.events(job.id, after_id=events[-1].id) == []

    newest = await store.last_event(job.id, "progress")
    assert newest == events[5] and newest.event.step == 3
    assert await store.last_event(job.id, "eval") is None
    with pytest.raises(ValueError, match="unknown event type"):
        await store.last_event(job.id, "progres")


async def test_a_nan_loss_is_stored_as_none(store: Store):
    job = await running_job(store)
    nan = Progress(step=1, total_steps=2, epoch=0.5, tokens_seen=1, tokens_per_s=1.0, loss=math.nan)
    stored = await store.append_event(job.id, 1, nan)
    assert stored.event.loss is None
    assert await store.events(job.id) == [stored]
