"""storage/outbox.py on freshly migrated databases: what each job change owes Discord (written in the
same transaction), how the deliverer's marks move an entry, and the backfill of migration 0003."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import aiosqlite
import pytest

from protocol.events import Checkpoint, Progress
from storage.migrate import apply_migrations, load_migrations
from storage.models import OutboxEntry
from storage.store import Store
from tests.storage.helpers import FakeClock, new_job, running_job, spec_maker
from tests.test_migration_dataset_kind import old_spec_json

CHANNEL = 555


@pytest.fixture
def db_path(
    tmp_path: Path,
) -> Path:  # beside the test's files; `clock` and `store`: tests/storage/conftest.py
    return tmp_path / "qlora-bot.db"


def progress(step: int) -> Progress:
    return Progress(step=step, total_steps=10, epoch=0.1 * step, tokens_seen=64 * step, tokens_per_s=100.0)


async def entry_of(store: Store, job_id: int, kind: str) -> OutboxEntry:
    [entry] = [entry for entry in await store.outbox.entries(job_id) if entry.kind == kind]
    return entry


async def test_a_blank_database_migrates_to_the_outbox_version(store: Store):
    assert await store.schema_version() == max(m.version for m in load_migrations()) >= 3


async def test_a_job_from_discord_owes_one_status_message_at_creation(store: Store, clock: FakeClock):
    job = await new_job(store, channel_id=CHANNEL)
    [entry] = await store.outbox.entries(job.id)
    assert (entry.kind, entry.channel_id, entry.state, entry.revision, entry.delivered_revision) == (
        "status",
        CHANNEL,
        "pending",
        1,
        0,
    )
    assert entry.created_at == entry.next_attempt_at == clock.now and entry.message_id is None
    assert len(entry.nonce) == 16 and int(entry.nonce, 16) >= 0  # random hex, a valid Discord nonce
    assert await store.outbox.due(clock.now) == [entry]
    cli_job = await new_job(store)  # no channel: nothing owed
    assert await store.outbox.entries(cli_job.id) == []


async def test_a_failed_job_creation_owes_nothing(store: Store, clock: FakeClock):
    def broken(folder: Path) -> None:
        raise RuntimeError("no room for the job folder")

    with pytest.raises(RuntimeError):
        await store.create_job(
            owner="discord:1", name="a", **spec_maker(), prepare_folder=broken, channel_id=CHANNEL
        )
    assert await store.outbox.due(clock.now) == []  # the row went with the job's transaction


async def test_every_visible_change_bumps_one_revision_of_one_entry(store: Store, clock: FakeClock):
    job = await new_job(store, channel_id=CHANNEL)
    started = await store.start_job(job.id, slot="cpu", resumed_from=None)
    await store.set_phase(job.id, "training")
    for step in (1, 2, 3):
        await store.append_event(job.id, started.attempt, progress(step))
    await store.append_event(job.id, started.attempt, Checkpoint(step=3, path="/ckpt-3"))  # not shown
    await store.record_checkpoint(job.id, "/ckpt-3")
    await store.request_cancel(job.id, "discord:1")
    await store.requeue_job(job.id, resume_from="/ckpt-3", outcome="stopped", detail="restart")
    [entry] = await store.outbox.entries(job.id)
    # created 1, +start, +phase, +3 progress, +requeue
    assert (entry.kind, entry.revision, entry.state) == ("status", 7, "pending")


async def test_the_completion_is_owed_once_when_the_job_ended(store: Store, clock: FakeClock, db_path: Path):
    job = await running_job(store, channel_id=CHANNEL)
    finished = await store.finish_job(job.id, "succeeded")
    completion = await entry_of(store, job.id, "completion")
    assert completion.state == "pending" and completion.created_at == clock.now
    assert (await entry_of(store, job.id, "status")).revision == 3  # created, started, finished
    await store.set_hub_state(finished.id, "pushed", url="https://hf.co/x")  # a later /push
    assert [e.kind for e in await store.outbox.entries(job.id)] == ["status", "completion"]
    with sqlite3.connect(db_path) as db, pytest.raises(sqlite3.IntegrityError, match="UNIQUE"):
        db.execute(
            "INSERT INTO outbox (job_id, kind, channel_id, nonce, created_at, next_attempt_at)"
            " VALUES (?, 'completion', 1, 'abc', 0, 0)",
            (job.id,),
        )
    queued = await new_job(store, channel_id=CHANNEL)
    await store.finish_job(queued.id, "cancelled", error_kind="cancelled")  # cancelled before it ran
    assert (await entry_of(store, queued.id, "completion")).state == "pending"


async def test_a_requested_publish_ends_before_the_completion_is_owed(store: Store, clock: FakeClock):
    job = await running_job(store, channel_id=CHANNEL, push_requested=True)
    await store.finish_job(job.id, "succeeded")
    assert [e.kind for e in await store.outbox.entries(job.id)] == ["status"]  # publishing…
    await store.set_hub_state(job.id, "push_failed", error="503")
    await store.set_hub_state(job.id, "pushed", url="https://hf.co/x")  # the /push retry
    assert [e.kind for e in await store.outbox.entries(job.id)] == ["status", "completion"]
    assert (await entry_of(store, job.id, "status")).revision == 5


async def test_a_job_s_completion_waits_for_its_status_message(store: Store, clock: FakeClock):
    job = await running_job(store, channel_id=CHANNEL)
    await store.finish_job(job.id, "cancelled")
    status = await entry_of(store, job.id, "status")
    assert await store.outbox.due(clock.now) == [status]  # not the completion: it would come first
    await store.outbox.mark_sending(status)
    posted = await store.outbox.mark_posted(status, 9001, revision=status.revision, content_hash="h1")
    assert (posted.state, posted.message_id, posted.delivered_hash) == ("delivered", 9001, "h1")
    assert (await store.get_job(job.id)).status_message_id == 9001
    assert [e.kind for e in await store.outbox.due(clock.now)] == ["completion"]


async def test_a_change_during_a_delivery_keeps_the_entry_pending(store: Store, clock: FakeClock):
    job = await running_job(store, channel_id=CHANNEL)
    status = await entry_of(store, job.id, "status")
    await store.outbox.mark_sending(status)
    assert (await store.outbox.entry(status.id)).first_sent_at == clock.now
    await store.append_event(job.id, 1, progress(1))  # while the post was on its way
    posted = await store.outbox.mark_posted(status, 42, revision=status.revision, content_hash="h1")
    assert (posted.state, posted.delivered_revision, posted.revision) == ("pending", 2, 3)
    await store.append_event(job.id, 1, progress(2))  # while an edit of revision 3 was on its way
    stale = await store.outbox.mark_edited(posted, revision=posted.revision, content_hash="h1b")
    assert (stale.state, stale.delivered_revision, stale.revision) == ("pending", 3, 4)
    posted = stale
    edited = await store.outbox.mark_edited(posted, revision=posted.revision, content_hash="h2")
    assert (edited.state, edited.delivered_revision, edited.delivered_hash) == ("delivered", 4, "h2")
    assert await store.outbox.due(clock.now) == []
    clock.advance(1)
    await store.set_phase(job.id, "saving")  # a delivered entry is due again at once
    assert [(e.id, e.next_attempt_at) for e in await store.outbox.due(clock.now)] == [(status.id, clock.now)]


async def test_retries_wait_and_a_permanent_failure_stays(store: Store, clock: FakeClock):
    job = await running_job(store, channel_id=CHANNEL)
    status = await entry_of(store, job.id, "status")
    await store.outbox.mark_retry(status, at=clock.now + 30, error="Service Unavailable (HTTP 503)")
    assert await store.outbox.due(clock.now) == []
    assert await store.outbox.next_due_at(clock.now) == clock.now + 30
    await store.append_event(job.id, 1, progress(1))  # a change does not cut a backoff short
    assert await store.outbox.due(clock.now + 29) == []
    [again] = await store.outbox.due(clock.now + 30)
    assert (again.tries, again.error) == (1, "Service Unavailable (HTTP 503)")
    await store.outbox.mark_failed(again, error="Missing Permissions (50013)", code=50013)
    await store.append_event(job.id, 1, progress(2))  # given up is given up
    failed = await store.outbox.entry(status.id)
    assert (failed.state, failed.error, failed.error_code, failed.tries) == (
        "failed",
        "Missing Permissions (50013)",
        50013,
        2,
    )
    assert await store.outbox.due(clock.now + 3600) == [] and await store.outbox.next_due_at(0) is None
    await store.finish_job(job.id, "succeeded")  # the completion is owed and tried on its own
    [completion] = await store.outbox.due(clock.now)
    assert completion.kind == "completion"
    with pytest.raises(ValueError, match="never edited"):
        await store.outbox.mark_edited(completion, revision=1, content_hash="x")


async def test_migration_0003_keeps_the_messages_of_older_jobs(tmp_path: Path, clock: FakeClock):
    path = tmp_path / "old.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await apply_migrations(db, load_migrations()[:2]) == [1, 2]
    now = time.time()
    old_jobs = [  # state, channel, status message, completion message, finished_at
        ("running", CHANNEL, 11, None, None),  # its status message is refreshed once
        ("succeeded", CHANNEL, 12, 99, now),  # announced
        ("succeeded", CHANNEL, 13, None, now - 3600),  # ended while the old bot was down
        ("failed", CHANNEL, 14, None, now - 30 * 86400),  # ended long ago, never announced
        ("queued", CHANNEL, None, None, None),  # its status post never landed
        ("cancelled", CHANNEL, None, None, now),  # ended before its status post landed
        ("succeeded", None, None, None, now),  # from the CLI
    ]
    with sqlite3.connect(path) as db:
        for job_id, (state, channel, message, completion, finished) in enumerate(old_jobs, start=1):
            db.execute(
                "INSERT INTO jobs (owner, name, spec, state, created_at, finished_at, channel_id,"
                " status_message_id, completion_message_id) VALUES ('discord:1', 'a', ?, ?, ?, ?, ?, ?, ?)",
                (
                    old_spec_json("data.jsonl", f"/data/jobs/{job_id}"),
                    state,
                    now - 7200,
                    finished,
                    channel,
                    message,
                    completion,
                ),
            )
    async with await Store.open(path, clock=clock) as migrated:
        entries = [entry for job_id in range(1, 8) for entry in await migrated.outbox.entries(job_id)]
    rows = {
        (entry.job_id, entry.kind): (entry.state, entry.message_id, entry.delivered_revision < entry.revision)
        for entry in entries
    }
    assert rows == {
        (1, "status"): ("pending", 11, True),
        (2, "status"): ("delivered", 12, False),
        (2, "completion"): ("delivered", 99, False),
        (3, "status"): ("delivered", 13, False),
        (3, "completion"): ("pending", None, True),  # announced now, as the old bot would have at start
        (4, "status"): ("delivered", 14, False),
        (5, "status"): ("pending", None, True),
        (6, "completion"): ("pending", None, True),
    }
    assert len({entry.nonce for entry in entries}) == len(entries)
