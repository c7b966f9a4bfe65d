"""storage/: migrations on a blank database, guarded job transitions, events, adapters and listings,
all against real SQLite files (one or two Stores on the same file, as the bot and the CLI would be).
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest

from protocol.events import Checkpoint, Done, Error, Phase, Progress, Started
from protocol.job_spec import DatasetSpec, JobSpec
from storage.database import DatabaseUnusable
from storage.migrate import MigrationError, apply_migrations, load_migrations, split_statements
from storage.models import Job, OutboxEntry
from storage.store import AdapterNameTaken, Store


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "qlora-bot.db"  # the folder does not exist yet: open() creates it


@pytest.fixture
async def store(db_path: Path, clock: FakeClock) -> AsyncIterator[Store]:
    async with await Store.open(db_path, clock=clock) as opened:
        yield opened


def spec_maker(base_model: str = "tiny-llama") -> dict[str, Any]:
    """The spec and where its job goes (jobs/ID), as create_job takes them."""
    spec = JobSpec(base_model=base_model, dataset=DatasetSpec(source="data.jsonl", format="messages"))
    return {"spec": spec, "jobs_dir": Path("/data/jobs")}


async def new_job(store: Store, owner: str = "discord:1", name: str = "adapter", **kwargs) -> Job:
    job, created = await store.create_job(owner=owner, name=name, **spec_maker(), **kwargs)
    assert created
    return job


async def running_job(store: Store, **kwargs) -> Job:
    job = await new_job(store, **kwargs)
    started = await store.start_job(job.id, slot="cpu", resumed_from=None)
    assert started is not None
    return started


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


# ---------------------------------------------------------------------------------------------
# Migrations


async def test_a_blank_database_is_migrated_to_the_newest_version(store: Store, db_path: Path):
    newest = max(migration.version for migration in load_migrations())
    assert await store.schema_version() == newest
    with sqlite3.connect(db_path) as db:
        versions = [row[0] for row in db.execute("SELECT version FROM schema_migrations ORDER BY version")]
        assert versions == list(range(1, newest + 1))
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_the_schema_has_the_tables_columns_and_indexes(store: Store, db_path: Path):
    with sqlite3.connect(db_path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        indexes = {
            row[0]: row[1] for row in db.execute("SELECT name, sql FROM sqlite_master WHERE type = 'index'")
        }

        def columns(table: str) -> set[str]:
            return {row[1] for row in db.execute(f"PRAGMA table_info({table})")}

        def indexed(index: str) -> list[str]:
            return [row[2] for row in db.execute(f"PRAGMA index_info({index})")]

        def foreign_tables(table: str) -> set[str]:
            return {row[2] for row in db.execute(f"PRAGMA foreign_key_list({table})")}

        def unique_columns(table: str) -> set[tuple[str, ...]]:
            unique = [row[1] for row in db.execute(f"PRAGMA index_list({table})") if row[2]]
            return {tuple(indexed(index)) for index in unique}

    assert {"jobs", "attempts", "events", "adapters", "outbox", "schema_migrations"} <= tables
    assert columns("jobs") == set(Job.__dataclass_fields__)
    assert columns("attempts") == {
        "job_id", "number", "started_at", "finished_at", "pid", "slot", "outcome", "detail", "resumed_from",
    }  # fmt: skip
    assert columns("events") >= {"id", "job_id", "attempt", "created_at", "type", "body"}
    assert columns("adapters") >= {"name", "job_id", "base_model", "path", "created_at", "hub_repo"}
    assert columns("schema_migrations") == {"version", "applied_at"}
    assert {name: indexed(name) for name in ("jobs_state", "jobs_owner_created", "events_job")} == {
        "jobs_state": ["state"],
        "jobs_owner_created": ["owner", "created_at"],
        "events_job": ["job_id", "id"],
    }
    # Uniqueness lives in the tables' constraints, except where it holds for some rows only.
    partial = {name for name, sql in indexes.items() if sql and "CREATE UNIQUE INDEX" in sql}
    assert partial == {"outbox_once_per_job"} and "WHERE kind IN" in indexes["outbox_once_per_job"]
    assert all(sql is None or "CREATE INDEX" in sql for name, sql in indexes.items() if name not in partial)
    assert columns("outbox") == set(OutboxEntry.__dataclass_fields__)
    assert ("nonce",) in unique_columns("outbox") and ("job_id", "kind") in unique_columns("outbox")
    assert ("idempotency_key",) in unique_columns("jobs")
    assert ("job_id", "number") in unique_columns("attempts")
    assert ("name",) in unique_columns("adapters")
    assert foreign_tables("attempts") == foreign_tables("events") == foreign_tables("adapters") == {"jobs"}
    assert foreign_tables("outbox") == {"jobs"}


async def test_reopening_an_existing_database_applies_nothing(store: Store, db_path: Path, clock: FakeClock):
    job = await new_job(store)
    await store.close()
    clock.advance(60)
    async with aiosqlite.connect(db_path, isolation_level=None) as db:
        before = await db.execute_fetchall("SELECT version, applied_at FROM schema_migrations")
        assert await apply_migrations(db, clock=clock) == []
        assert await db.execute_fetchall("SELECT version, applied_at FROM schema_migrations") == before
    async with await Store.open(db_path, clock=clock) as reopened:
        assert await reopened.get_job(job.id) == job


async def test_the_runner_applies_pending_migrations_in_order(tmp_path: Path, clock: FakeClock):
    folder = write_migrations(
        tmp_path / "migrations",
        {
            "0001_first.sql": "CREATE TABLE a (x INTEGER); -- a comment; with a semicolon\n",
            "0002_second.sql": "INSERT INTO a VALUES (1);\nINSERT INTO a VALUES (';');\n-- trailing note\n",
        },
    )
    db_file = tmp_path / "runner.db"
    async with aiosqlite.connect(db_file, isolation_level=None) as db:
        assert await apply_migrations(db, load_migrations(folder), clock=clock) == [1, 2]
        assert [tuple(row) for row in await db.execute_fetchall("SELECT x FROM a")] == [(1,), (";",)]
        assert await apply_migrations(db, load_migrations(folder), clock=clock) == []


async def test_a_failing_migration_leaves_the_previous_version(tmp_path: Path):
    async with aiosqlite.connect(tmp_path / "broken.db", isolation_level=None) as db:
        good = load_migrations([(1, "CREATE TABLE a (x INTEGER);")])
        assert await apply_migrations(db, good) == [1]
        broken = load_migrations([(1, "CREATE TABLE a (x INTEGER);"), (2, "CREATE TABLE b (y); NOPE;")])
        with pytest.raises(sqlite3.OperationalError):
            await apply_migrations(db, broken)
        assert await db.execute_fetchall("SELECT MAX(version) FROM schema_migrations") == [(1,)]
        # Table b was created inside the failed migration's transaction, so it is gone too.
        assert await db.execute_fetchall("SELECT name FROM sqlite_master WHERE name = 'b'") == []


def test_the_loader_refuses_a_gap(tmp_path: Path):
    folder = write_migrations(tmp_path / "gap", {"0001_a.sql": "SELECT 1;", "0003_c.sql": "SELECT 3;"})
    with pytest.raises(MigrationError, match=r"missing \[2\]"):
        load_migrations(folder)
    with pytest.raises(MigrationError, match=r"missing \[1\]"):
        load_migrations([(2, "SELECT 2;")])


def test_the_loader_refuses_a_duplicate(tmp_path: Path):
    folder = write_migrations(
        tmp_path / "dup", {"0001_a.sql": "SELECT 1;", "0002_b.sql": "SELECT 2;", "0002_c.sql": "SELECT 2;"}
    )
    with pytest.raises(MigrationError, match="duplicate migration number"):
        load_migrations(folder)


def test_the_loader_refuses_a_badly_named_file(tmp_path: Path):
    folder = write_migrations(tmp_path / "odd", {"0001_a.sql": "SELECT 1;", "second.sql": "SELECT 2;"})
    with pytest.raises(MigrationError, match=r"NNNN_description\.sql"):
        load_migrations(folder)


def test_the_packaged_migrations_are_numbered_from_one():
    versions = [migration.version for migration in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))
    assert versions[0] == 1


def test_statements_split_on_semicolons_outside_strings_comments_and_triggers():
    sql = (
        "CREATE TABLE t (x TEXT); -- one; two\n"
        "CREATE TRIGGER t_ai AFTER INSERT ON t BEGIN UPDATE t SET x = 'a;b'; END;\n"
        "INSERT INTO t VALUES ('c;d'); INSERT INTO t VALUES ('e');\n"
    )
    assert len(split_statements(sql)) == 4
    with pytest.raises(MigrationError, match="closing semicolon"):
        split_statements("CREATE TABLE t (x);\nCREATE TABLE u (y)")


def job_folders(jobs_dir: Path, *ids: int) -> Path:
    """Job folders as earlier jobs leave them (each holds its spec)."""
    for job_id in ids:
        (jobs_dir / str(job_id)).mkdir(parents=True, exist_ok=True)
        (jobs_dir / str(job_id) / "spec.json").write_text("{}")
    return jobs_dir


async def test_a_fresh_database_numbers_jobs_above_the_existing_job_folders(tmp_path: Path):
    jobs_dir = job_folders(tmp_path / "jobs", *range(1, 8))
    (jobs_dir / "notes").mkdir()  # not a job folder: ignored
    async with await Store.open(tmp_path / "qlora-bot.db", jobs_dir=jobs_dir) as store:
        assert (await new_job(store)).id == 8
    async with await Store.open(tmp_path / "qlora-bot.db", jobs_dir=jobs_dir) as store:
        assert (await new_job(store)).id == 9  # reopening never lowers the sequence


async def test_a_database_restored_from_an_older_backup_skips_the_newer_folders(tmp_path: Path):
    db_path, jobs_dir = tmp_path / "qlora-bot.db", tmp_path / "jobs"
    async with await Store.open(db_path, jobs_dir=jobs_dir) as store:
        for _ in range(3):
            await new_job(store)
    job_folders(jobs_dir, 1, 2, 3, 4, 5)  # jobs 4 and 5 were made after the backup was taken
    async with await Store.open(db_path, jobs_dir=jobs_dir) as store:
        assert (await new_job(store)).id == 6
        assert [job.id for job in await store.list_jobs()] == [6, 3, 2, 1]


async def test_an_empty_database_file_beside_job_folders_is_refused_untouched(tmp_path: Path):
    db_path = tmp_path / "qlora-bot.db"
    db_path.write_bytes(b"")
    jobs_dir = job_folders(tmp_path / "jobs", 1, 2)
    with pytest.raises(DatabaseUnusable, match=r"is empty \(0 bytes\) but job folders up to jobs/2 exist"):
        await Store.open(db_path, jobs_dir=jobs_dir)
    assert db_path.stat().st_size == 0 and sorted(p.name for p in tmp_path.iterdir()) == [
        "jobs",
        "qlora-bot.db",
    ]
    # Without job folders a zero-length file has nothing to lose (a crash in the very first open).
    async with await Store.open(db_path, jobs_dir=tmp_path / "no-jobs") as store:
        assert (await new_job(store)).id == 1


async def test_a_file_that_is_not_a_database_is_refused_with_what_to_do(tmp_path: Path):
    db_path = tmp_path / "qlora-bot.db"
    db_path.write_bytes(b"not a database at all; " * 200)
    with pytest.raises(DatabaseUnusable) as refused:
        await Store.open(db_path)
    message = str(refused.value)
    assert str(db_path) in message and "not a readable SQLite database" in message
    assert "restore it from a backup" in message and "move it aside" in message


async def test_a_database_newer_than_the_code_is_refused(db_path: Path):
    async with await Store.open(db_path):
        pass
    with pytest.raises(MigrationError, match="newer than this code"):
        await Store.open(db_path, migrations=[])


# ---------------------------------------------------------------------------------------------
# Creating jobs


async def test_create_job_stores_the_spec_built_for_its_id(store: Store, clock: FakeClock):
    job = await new_job(store, owner="local:alice", name="guanaco", guild_id=7, channel_id=8)
    assert job.folder == f"/data/jobs/{job.id}"
    assert (job.state, job.attempt, job.phase, job.hub_state) == ("queued", 1, None, "none")
    assert (job.owner, job.name, job.guild_id, job.channel_id) == ("local:alice", "guanaco", 7, 8)
    assert job.created_at == clock.now
    assert not job.is_terminal
    assert await store.get_job(job.id) == job
    assert await store.get_job(job.id + 100) is None


async def test_the_same_idempotency_key_creates_one_job(store: Store):
    first, created = await store.create_job(
        owner="discord:1", name="a", **spec_maker(), idempotency_key="interaction:99"
    )
    again, created_again = await store.create_job(
        owner="discord:1", name="b", **spec_maker("other"), idempotency_key="interaction:99"
    )
    assert (created, created_again) == (True, False)
    assert again == first
    assert await store.job_by_idempotency_key("interaction:99") == first
    assert await store.job_by_idempotency_key("interaction:100") is None
    assert len(await store.list_jobs()) == 1
    # Jobs without a key never collide with each other.
    await new_job(store)
    await new_job(store)
    assert len(await store.list_jobs()) == 3


async def test_a_failing_spec_builder_creates_nothing(store: Store):
    def broken(folder: Path) -> None:
        raise RuntimeError("no room for the job folder")

    with pytest.raises(RuntimeError):
        await store.create_job(
            owner="discord:1", name="a", **spec_maker(), prepare_folder=broken, idempotency_key="k"
        )
    assert await store.list_jobs() == []
    job, created = await store.create_job(owner="discord:1", name="a", **spec_maker(), idempotency_key="k")
    assert created and job.idempotency_key == "k"


# ---------------------------------------------------------------------------------------------
# Guarded transitions


async def test_start_job_runs_once_and_opens_one_attempt(store: Store, clock: FakeClock):
    job = await new_job(store)
    clock.advance(5)
    started = await store.start_job(job.id, slot="cuda:0", resumed_from=None)
    assert started is not None
    assert (started.state, started.started_at) == ("running", clock.now)
    assert await store.start_job(job.id, slot="cuda:1", resumed_from=None) is None
    await store.set_worker_pid(job.id, 1, 4242)
    [attempt] = await store.attempts(job.id)
    assert (attempt.number, attempt.slot, attempt.pid, attempt.outcome) == (1, "cuda:0", 4242, None)
    assert attempt.started_at == clock.now and attempt.finished_at is None


async def test_phase_and_checkpoint_only_while_running(store: Store):
    job = await new_job(store)
    assert await store.set_phase(job.id, "training") is None
    assert await store.record_checkpoint(job.id, "/ckpt-1") is None
    await store.start_job(job.id, slot="cpu", resumed_from=None)
    assert (await store.set_phase(job.id, "training")).phase == "training"
    assert (await store.record_checkpoint(job.id, "/ckpt-10")).checkpoint_path == "/ckpt-10"
    with pytest.raises(ValueError, match="unknown phase"):
        await store.set_phase(job.id, "dancing")
    done = await store.finish_job(job.id, "succeeded", adapter_path="/adapter")
    assert done.phase is None
    assert await store.set_phase(job.id, "saving") is None


async def test_success_closes_the_attempt(store: Store, clock: FakeClock):
    job = await running_job(store)
    clock.advance(30)
    done = await store.finish_job(job.id, "succeeded", adapter_path=f"/data/jobs/{job.id}/adapter")
    assert done is not None and done.is_terminal
    assert (done.state, done.finished_at, done.adapter_path) == (
        "succeeded",
        clock.now,
        f"/data/jobs/{job.id}/adapter",
    )
    [attempt] = await store.attempts(job.id)
    assert (attempt.outcome, attempt.finished_at) == ("succeeded", clock.now)


async def test_cancel_after_success_is_refused(store: Store):
    job = await running_job(store)
    await store.finish_job(job.id, "succeeded")
    assert await store.request_cancel(job.id, "discord:1") is None
    assert await store.finish_job(job.id, "cancelled") is None
    assert (await store.get_job(job.id)).state == "succeeded"


async def test_success_after_cancel_is_refused(store: Store):
    job = await running_job(store)
    cancelled = await store.finish_job(
        job.id, "cancelled", error_kind="cancelled", error_message="cancelled by discord:1"
    )
    assert cancelled.state == "cancelled"
    assert await store.finish_job(job.id, "succeeded", adapter_path="/adapter") is None
    after = await store.get_job(job.id)
    assert (after.state, after.adapter_path, after.error_kind) == ("cancelled", None, "cancelled")
    assert [attempt.outcome for attempt in await store.attempts(job.id)] == ["cancelled"]


async def test_a_queued_job_may_only_be_cancelled_or_failed(store: Store):
    job = await new_job(store)
    assert await store.finish_job(job.id, "succeeded") is None
    failed = await store.finish_job(
        job.id,
        "failed",
        error_kind="user_error",
        error_message="dataset not found",
        error_hint="check the id",
    )
    assert (failed.state, failed.error_kind, failed.error_hint) == ("failed", "user_error", "check the id")
    assert await store.attempts(job.id) == []  # it never ran

    other = await new_job(store)
    assert (await store.finish_job(other.id, "cancelled")).state == "cancelled"
    assert await store.start_job(other.id, slot="cpu", resumed_from=None) is None
    with pytest.raises(ValueError, match="terminal state"):
        await store.finish_job(other.id, "running")  # type: ignore[arg-type]


async def test_requeue_increments_the_attempt_and_records_resume_from(store: Store, clock: FakeClock):
    job = await running_job(store)
    await store.record_checkpoint(job.id, "/ckpt-50")
    clock.advance(10)
    requeued = await store.requeue_job(
        job.id, resume_from="/ckpt-50", outcome="crashed", detail="worker killed by signal SIGKILL"
    )
    assert (requeued.state, requeued.attempt, requeued.checkpoint_path) == ("queued", 2, "/ckpt-50")
    assert await store.requeue_job(job.id, resume_from=None, outcome="crashed", detail="again") is None

    restarted = await store.start_job(job.id, slot="cuda:0", resumed_from="/ckpt-50")
    assert restarted.attempt == 2
    await store.finish_job(job.id, "failed", error_kind="oom", attempt_outcome="failed", attempt_detail="OOM")
    first, second = await store.attempts(job.id)
    assert (first.number, first.outcome, first.detail, first.finished_at) == (
        1,
        "crashed",
        "worker killed by signal SIGKILL",
        clock.now,
    )
    assert (second.number, second.resumed_from, second.outcome, second.detail) == (
        2,
        "/ckpt-50",
        "failed",
        "OOM",
    )


async def test_the_first_cancel_request_wins(store: Store):
    job = await new_job(store, owner="discord:1")
    first = await store.request_cancel(job.id, "discord:1")
    second = await store.request_cancel(job.id, "system: shutting down")
    assert first.cancel_requested_by == second.cancel_requested_by == "discord:1"
    assert (await store.get_job(job.id)).state == "queued"  # a request is not a transition


async def test_hub_state_only_for_succeeded_jobs(store: Store):
    job = await running_job(store)
    assert await store.set_hub_state(job.id, "pushed", url="https://hf.co/x") is None
    await store.finish_job(job.id, "succeeded")
    failed = await store.set_hub_state(job.id, "push_failed", error="503 from the Hub")
    assert (failed.hub_state, failed.hub_error) == ("push_failed", "503 from the Hub")
    pushed = await store.set_hub_state(job.id, "pushed", url="https://hf.co/x", commit="abc123")
    assert (pushed.hub_state, pushed.hub_url, pushed.hub_error) == ("pushed", "https://hf.co/x", None)
    assert pushed.hub_commit == "abc123"


async def test_jobs_whose_requested_publish_never_ended(store: Store):
    asked, not_asked = await running_job(store, push_requested=True), await running_job(store)
    for job in (asked, not_asked):
        await store.finish_job(job.id, "succeeded")
    pending = await store.jobs_to_publish()
    assert [job.id for job in pending] == [asked.id] and pending[0].publish_pending
    await store.set_hub_state(asked.id, "push_failed", error="503")
    assert await store.jobs_to_publish() == []  # a failed publish waits for /push, not for a restart


async def test_the_check_constraint_backs_up_the_guards(store: Store, db_path: Path):
    job = await new_job(store)
    with sqlite3.connect(db_path) as db:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db.execute("UPDATE jobs SET state = 'exploded' WHERE id = ?", (job.id,))
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db.execute("UPDATE jobs SET hub_state = 'maybe' WHERE id = ?", (job.id,))
    assert (await store.get_job(job.id)).state == "queued"


# ---------------------------------------------------------------------------------------------
# Events


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


# ---------------------------------------------------------------------------------------------
# Adapters


async def test_adapter_names_are_unique(store: Store, clock: FakeClock):
    first_job, second_job = await new_job(store), await new_job(store)
    added = await store.add_adapter(name="guanaco", job_id=first_job.id, base_model="tiny", path="/a/1")
    assert (added.name, added.job_id, added.created_at, added.hub_repo) == (
        "guanaco",
        first_job.id,
        clock.now,
        None,
    )
    with pytest.raises(AdapterNameTaken, match="guanaco"):
        await store.add_adapter(name="guanaco", job_id=second_job.id, base_model="tiny", path="/a/2")
    assert isinstance(AdapterNameTaken("x"), ValueError)
    assert await store.adapter("guanaco") == added
    assert await store.adapter("missing") is None


async def test_adapters_newest_first_and_hub_repo(store: Store, clock: FakeClock):
    job = await new_job(store)
    for name in ("one", "two", "three"):
        clock.advance(1)
        await store.add_adapter(name=name, job_id=job.id, base_model="tiny", path=f"/a/{name}")
    assert [adapter.name for adapter in await store.adapters()] == ["three", "two", "one"]
    assert [adapter.name for adapter in await store.adapters(limit=1)] == ["three"]
    await store.set_adapter_hub_repo("two", "team/two")
    assert (await store.adapter("two")).hub_repo == "team/two"


# ---------------------------------------------------------------------------------------------
# Listing and counting


async def test_list_and_count_filter_by_owner_state_and_time(store: Store, clock: FakeClock):
    alice_old = await new_job(store, owner="local:alice")
    clock.advance(3600)
    bob = await running_job(store, owner="discord:2")
    clock.advance(3600)
    alice_new = await running_job(store, owner="local:alice")
    alice_queued = await new_job(store, owner="local:alice")
    await store.finish_job(alice_new.id, "succeeded")

    assert [job.id for job in await store.list_jobs()] == [
        alice_queued.id,
        alice_new.id,
        bob.id,
        alice_old.id,
    ]
    assert [job.id for job in await store.list_jobs(limit=2)] == [alice_queued.id, alice_new.id]
    assert [job.id for job in await store.list_jobs(owner="local:alice", states=["queued"])] == [
        alice_queued.id,
        alice_old.id,
    ]
    assert [job.id for job in await store.list_jobs(states=["running"])] == [bob.id]
    assert await store.list_jobs(states=[]) == []
    with pytest.raises(ValueError, match="unknown job state"):
        await store.list_jobs(states=["queud"])

    assert await store.count_jobs(owner="local:alice") == 3
    assert await store.count_jobs(owner="local:alice", states=["queued", "running"]) == 2
    assert await store.count_jobs(owner="local:alice", since=clock.now - 60) == 2
    assert await store.count_jobs(owner="local:alice", states=["queued"], since=clock.now - 60) == 1
    assert await store.count_jobs(owner="nobody") == 0

    assert [job.id for job in await store.queued_jobs()] == [alice_old.id, alice_queued.id]
    assert [job.id for job in await store.running_jobs()] == [bob.id]


async def test_recent_runtimes_of_succeeded_jobs(store: Store, clock: FakeClock):
    for seconds, state in ((100, "succeeded"), (50, "failed"), (200, "succeeded"), (300, "succeeded")):
        job = await running_job(store)
        clock.advance(seconds)
        await store.finish_job(job.id, state)
    assert await store.recent_runtimes() == [300.0, 200.0, 100.0]
    assert await store.recent_runtimes(limit=2) == [300.0, 200.0]


async def test_last_start_times_per_person(store: Store, clock: FakeClock):
    await new_job(store, owner="discord:3")  # never started: absent
    await running_job(store, owner="discord:1")
    clock.advance(10)
    await running_job(store, owner="discord:2")
    clock.advance(10)
    await running_job(store, owner="discord:1")
    assert await store.last_start_times() == {"discord:1": clock.now, "discord:2": clock.now - 10}


async def test_an_unknown_attempt_outcome_is_refused(store: Store):
    job = await running_job(store)
    with pytest.raises(ValueError, match="unknown attempt outcome 'exploded'"):
        await store.requeue_job(job.id, resume_from=None, outcome="exploded", detail="x")
    assert (await store.get_job(job.id)).state == "running"  # the transaction rolled back


# ---------------------------------------------------------------------------------------------
# Two processes on one file (the bot and the CLI)


async def test_a_write_by_one_store_is_visible_to_another(store: Store, db_path: Path, clock: FakeClock):
    async with await Store.open(db_path, clock=clock) as cli:
        job, _ = await cli.create_job(owner="local:alice", name="cli-job", **spec_maker())
        seen = await store.get_job(job.id)
        assert seen == job
        await store.start_job(job.id, slot="cpu", resumed_from=None)
        assert (await cli.get_job(job.id)).state == "running"
        # The guard holds across connections: the CLI cannot start what the bot already started.
        assert await cli.start_job(job.id, slot="cpu", resumed_from=None) is None
        await cli.append_event(job.id, 1, Phase(name="validating"))
        assert [event.type for event in await store.events(job.id)] == ["phase"]


async def test_concurrent_writers_on_one_file_never_duplicate_a_key(store: Store, db_path: Path):
    async with await Store.open(db_path) as other:

        async def create(on: Store, index: int) -> bool:
            _, created = await on.create_job(
                owner="discord:1",
                name=f"job-{index}",
                **spec_maker(),
                idempotency_key="interaction:1",
            )
            return created

        results = await asyncio.gather(*(create(store if i % 2 else other, i) for i in range(20)))
        assert results.count(True) == 1
        jobs = await asyncio.gather(*(new_job(store if i % 2 else other) for i in range(20)))
        assert len({job.id for job in jobs}) == 20
        assert len(await store.list_jobs(limit=100)) == 21
