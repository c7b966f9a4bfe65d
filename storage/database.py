"""The one aiosqlite connection a Store talks through: pragmas, migrations at open, and the lock and
transactions that make it safe to share between coroutines and with another process.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from storage import migrate


class Database:
    """Build it with `await Database.open(path)`.

    Another process (the CLI) may use the same file at the same time: WAL lets readers run beside a
    writer, busy_timeout makes a writer wait for the other's write lock instead of failing, and every
    transaction starts with BEGIN IMMEDIATE so it never has to upgrade a read lock mid-way (SQLite
    cannot wait for that upgrade and fails it with "database is locked").
    """

    def __init__(self, connection: aiosqlite.Connection) -> None:
        self._connection = connection
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
    ) -> Database:
        """Open (creating it and its folder if needed) the database and apply pending migrations."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: the sqlite3 module never opens transactions behind our back; we do.
        connection = await aiosqlite.connect(path, isolation_level=None)
        try:
            connection.row_factory = sqlite3.Row
            await connection.execute("PRAGMA busy_timeout = 5000")  # first, so the pragmas below may wait
            await connection.execute_fetchall("PRAGMA journal_mode = WAL")
            await connection.execute("PRAGMA foreign_keys = ON")
            await migrate.apply_migrations(connection, migrations, clock=clock)
        except BaseException:
            await connection.close()
            raise
        return cls(connection)

    async def close(self) -> None:
        async with self._lock:
            await self._connection.close()

    async def schema_version(self) -> int:
        async with self._lock:
            return await migrate.schema_version(self._connection)

    async def run(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """One statement and all its rows; a write commits on its own (one statement is atomic)."""
        async with self._lock:
            return list(await self._connection.execute_fetchall(sql, params))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Several statements that commit together, or not at all if the block raises."""
        async with self._lock:
            await self._connection.execute("BEGIN IMMEDIATE")
            try:
                yield self._connection
            except BaseException:
                await self._connection.execute("ROLLBACK")
                raise
            await self._connection.execute("COMMIT")
