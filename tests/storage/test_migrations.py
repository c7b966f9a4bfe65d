"""storage/migrate.py: numbered migrations applied to blank and existing databases, in order and each
in its own transaction; the loader refuses gaps, duplicates and odd names; the packaged schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import aiosqlite
import pytest

from storage.migrate import MigrationError, apply_migrations, load_migrations, split_statements
from storage.models import Job, OutboxEntry
from storage.store import Store
from tests.storage.helpers import FakeClock, new_job


def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


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


async def test_a_database_newer_than_the_code_is_refused(db_path: Path):
    async with await Store.open(db_path):
        pass
    with pytest.raises(MigrationError, match="newer than this code"):
        await Store.open(db_path, migrations=[])
