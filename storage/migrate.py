"""The schema migration runner: loads the numbered storage/migrations/NNNN_name.sql files, refuses a gap
or a duplicate, and applies the pending ones in order, one transaction each, recording each version.
"""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

import aiosqlite

_FILE_NAME = re.compile(r"^(\d+)_[A-Za-z0-9_]+\.sql$")


class MigrationError(RuntimeError):
    """The migrations on disk, or the database's recorded version, cannot be trusted."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def statements(self) -> list[str]:
        return split_statements(self.sql, where=f"migration {self.name}")


MigrationSource = str | Path | Traversable | Iterable[tuple[int, str]]


def load_migrations(source: MigrationSource | None = None) -> list[Migration]:
    """The migrations in version order, from the package (default), a folder of NNNN_name.sql files,
    or (number, sql) pairs; refuses a gap or a duplicate in the numbering."""
    if source is None:
        source = resources.files("storage") / "migrations"
    if isinstance(source, str):
        source = Path(source)
    if isinstance(source, (Path, Traversable)):
        migrations = [_from_file(entry) for entry in source.iterdir() if entry.name.endswith(".sql")]
    else:
        migrations = [Migration(int(number), f"{int(number):04d}", sql) for number, sql in source]
    migrations.sort(key=lambda migration: migration.version)
    check_numbering(migrations)
    return migrations


def check_numbering(migrations: Sequence[Migration]) -> None:
    """Versions must run 1, 2, 3, ... with no gap and no duplicate: a hole would let a database record
    version N without ever having run a step before it."""
    versions = sorted(migration.version for migration in migrations)
    duplicates = sorted({version for version in versions if versions.count(version) > 1})
    if duplicates:
        raise MigrationError(f"duplicate migration number(s): {', '.join(map(str, duplicates))}")
    if versions != list(range(1, len(versions) + 1)):
        missing = sorted(set(range(1, versions[-1] + 1)) - set(versions))
        raise MigrationError(f"migration numbers must run 1, 2, 3, ... without a gap; missing {missing}")


def _from_file(entry: Path | Traversable) -> Migration:
    match = _FILE_NAME.match(entry.name)
    if match is None:
        raise MigrationError(f"{entry.name}: migration files are named NNNN_description.sql")
    return Migration(int(match.group(1)), entry.name, entry.read_text(encoding="utf-8"))


def split_statements(sql: str, *, where: str = "script") -> list[str]:
    """Split a script into single statements with SQLite's own tokenizer (semicolons in strings,
    comments and trigger bodies do not end a statement).

    We run statements one by one rather than with executescript() because executescript() commits any
    open transaction first, which would break one-transaction-per-migration.
    """
    statements, start = [], 0
    for index, char in enumerate(sql):
        if char == ";" and sqlite3.complete_statement(sql[start : index + 1]):
            statements.append(sql[start : index + 1].strip())
            start = index + 1
    # After the last semicolon only blank lines and -- comments may remain.
    leftover = [line.strip() for line in sql[start:].splitlines()]
    code = [line for line in leftover if line and not line.startswith("--")]
    if code:
        raise MigrationError(f"{where}: statement without a closing semicolon: {code[0]!r}")
    return statements


async def schema_version(db: aiosqlite.Connection) -> int:
    """The highest migration recorded in the database; 0 for a blank one."""
    rows = await db.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    )
    if not rows:
        return 0
    rows = await db.execute_fetchall("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    return int(rows[0][0])


async def apply_migrations(
    db: aiosqlite.Connection,
    migrations: Iterable[Migration] | None = None,
    *,
    clock: Callable[[], float] = time.time,
) -> list[int]:
    """Apply every migration newer than the database's version; return the versions applied.

    `db` must be in autocommit mode (isolation_level=None): each migration runs inside its own
    BEGIN IMMEDIATE ... COMMIT, so a failing step leaves the database at the previous version.
    """
    if migrations is None:
        migrations = load_migrations()
    else:
        migrations = sorted(migrations, key=lambda migration: migration.version)
        check_numbering(migrations)
    latest = migrations[-1].version if migrations else 0
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
    )
    current = await schema_version(db)
    if current > latest:
        raise MigrationError(
            f"the database is at schema version {current}, newer than this code knows ({latest}); "
            "upgrade qlora-bot instead of opening it with an older version"
        )
    applied = []
    for migration in migrations:
        if migration.version <= current:
            continue
        statements = migration.statements  # parse before taking the write lock
        # IMMEDIATE takes the write lock up front, so two processes opening a fresh database at once
        # queue here (busy_timeout) instead of both running the same CREATE TABLEs.
        await db.execute("BEGIN IMMEDIATE")
        try:
            done = await db.execute_fetchall(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
            )
            if done:  # another process applied it while we waited for the lock
                await db.execute("ROLLBACK")
                continue
            for statement in statements:
                await db.execute_fetchall(statement)
            await db.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)",
                (migration.version, clock()),
            )
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        applied.append(migration.version)
    return applied
