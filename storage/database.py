"""The one aiosqlite connection a Store talks through: the checks, pragmas and migrations at open, and
the lock and transactions that make it safe to share between coroutines and with another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from storage import migrate
from storage.disk_space import DiskFull, DiskReserve, is_disk_full
from storage.job_folders import highest_job_folder, seed_job_ids

# What SQLite says about a file that is not a database, or one whose pages are damaged.
_UNREADABLE = {sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT}


class DatabaseUnusable(RuntimeError):
    """The database file cannot be used as it is; the message names it and says what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            f"the job database {path} {problem}; restore it from a backup, or move it aside (with any "
            f"{path.name}-wal and -shm beside it) to start with an empty job list: the job folders are "
            "kept and new job ids continue above them"
        )
        self.path = path


class Database:
    """Build it with `await Database.open(path)`.

    Another process (the CLI) may use the same file at the same time: WAL lets readers run beside a
    writer, busy_timeout makes a writer wait for the other's write lock instead of failing, and every
    transaction starts with BEGIN IMMEDIATE so it never has to upgrade a read lock mid-way (SQLite
    cannot wait for that upgrade and fails it with "database is locked").
    """

    def __init__(self, connection: aiosqlite.Connection, reserve: DiskReserve | None = None) -> None:
        self._connection = connection
        self._reserve = reserve
        self._reserve_held = reserve.take() if reserve is not None else False
        # One connection serves every coroutine of the process: without this lock a coroutine's
        # statement could land inside another's open transaction.
        self._lock = asyncio.Lock()

    @classmethod
    async def open(
        cls,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        migrations: Iterable[migrate.Migration] | None = None,
        jobs_dir: Path | None = None,
    ) -> Database:
        """Open (creating it and its folder if needed) the database and apply pending migrations.

        With `jobs_dir` (the folder of the job folders jobs/<id>), job ids continue above the highest
        numbered folder there. Raises DatabaseUnusable for a file that is not a readable database, and
        for an empty file that stands where a database with jobs was (see _refuse_empty_file).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        highest = highest_job_folder(jobs_dir)
        _refuse_empty_file(path, highest)
        # isolation_level=None: the sqlite3 module never opens transactions behind our back; we do.
        connection = await aiosqlite.connect(path, isolation_level=None)
        try:
            connection.row_factory = sqlite3.Row
            await connection.execute("PRAGMA busy_timeout = 5000")  # first, so the pragmas below may wait
            await connection.execute_fetchall("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA foreign_keys = ON")
            await migrate.apply_migrations(connection, migrations, clock=clock)
            if highest:
                await seed_job_ids(connection, highest)
        except sqlite3.DatabaseError as error:
            await connection.close()
            if (getattr(error, "sqlite_errorcode", 0) or 0) & 0xFF in _UNREADABLE:  # primary code
                # Reading the header and the schema is what finds these; damage in pages that open
                # never reads shows up later, on the statement that reads them.
                raise DatabaseUnusable(path, f"is not a readable SQLite database ({error})") from error
            raise
        except BaseException:
            await connection.close()
            raise
        return cls(connection, DiskReserve(path.parent))

    async def close(self) -> None:
        async with self._lock:
            await self._connection.close()

    async def schema_version(self) -> int:
        async with self._lock:
            return await migrate.schema_version(self._connection)

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One statement and all its rows; a write commits on its own (one statement is atomic)."""
        async with self._lock:
            with self._full_disk_reported():
                return list(await self._connection.execute_fetchall(sql, params))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Several statements that commit together, or not at all if the block raises."""
        async with self._lock:
            with self._full_disk_reported():
                await self._connection.execute("BEGIN IMMEDIATE")
                try:
                    yield self._connection
                except BaseException:
                    with contextlib.suppress(sqlite3.OperationalError):  # SQLite may have rolled back
                        await self._connection.execute("ROLLBACK")
                    raise
                try:
                    await self._connection.execute("COMMIT")
                except BaseException:
                    with contextlib.suppress(sqlite3.OperationalError):
                        await self._connection.execute("ROLLBACK")
                    raise

    @contextlib.contextmanager
    def _full_disk_reported(self) -> Iterator[None]:
        """SQLite's "database or disk is full" becomes DiskFull naming the folder, and the reserve is
        given back so the writes that record it have room; it is taken again once there is space."""
        if self._reserve is not None and not self._reserve_held:
            self._reserve_held = self._reserve.take()
        try:
            yield
        except sqlite3.OperationalError as error:
            if not is_disk_full(error) or self._reserve is None:
                raise
            self._reserve.give_back()
            self._reserve_held = False
            raise DiskFull(self._reserve.folder) from error


def _refuse_empty_file(path: Path, highest_job_folder: int) -> None:
    """SQLite takes a zero-length file for a new, empty database (and deletes a WAL file beside it).

    A missing file is a deliberate fresh start (the advice in DatabaseUnusable moves the old one aside)
    and so is a zero-length one in a data directory without job folders: nothing can be lost, and a
    crash during the very first open leaves exactly that. But a zero-length file beside job folders, or
    beside a non-empty WAL, is a database that lost its contents (a failed copy, a full disk, a
    truncation): starting over there would silently drop every job, so it is refused before SQLite
    touches it. The check runs before connecting, because connecting creates a zero-length file.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return
    if size:
        return
    wal = path.with_name(path.name + "-wal")
    wal_size = wal.stat().st_size if wal.exists() else 0
    if highest_job_folder or wal_size:
        evidence = f"job folders up to jobs/{highest_job_folder} exist" if highest_job_folder else ""
        evidence = evidence or f"{wal.name} is not"
        raise DatabaseUnusable(path, f"is empty (0 bytes) but {evidence}")
