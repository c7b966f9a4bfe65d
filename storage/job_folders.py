"""Job ids and job folders: a job's folder is jobs/<id>, so the jobs table's id sequence must stay above
every numbered folder on disk, whatever happened to the database (a fresh one after the old was moved
aside, one restored from an older backup).
"""

from __future__ import annotations

from pathlib import Path

import aiosqlite


def highest_job_folder(jobs_dir: Path | None) -> int:
    """The largest N with a folder jobs_dir/N; 0 when there is none (or no jobs_dir)."""
    if jobs_dir is None:
        return 0
    try:
        entries = list(Path(jobs_dir).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return max((int(entry.name) for entry in entries if entry.name.isdigit() and entry.is_dir()), default=0)


async def seed_job_ids(connection: aiosqlite.Connection, floor: int) -> None:
    """Raise the jobs table's AUTOINCREMENT sequence to at least `floor`, so the next job id is above it.

    SQLite documents sqlite_sequence as writable with ordinary statements. Only ever raised, never
    lowered, in one IMMEDIATE transaction, so two processes opening the database at once agree; the
    write lock is only taken when the sequence is below the floor (most opens find it above).
    """
    if await _highest_id(connection) >= floor:
        return
    await connection.execute("BEGIN IMMEDIATE")
    try:
        if await _highest_id(connection) < floor:
            await connection.execute("DELETE FROM sqlite_sequence WHERE name = 'jobs'")
            await connection.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('jobs', ?)", (floor,))
        await connection.execute("COMMIT")
    except BaseException:
        await connection.execute("ROLLBACK")
        raise


async def _highest_id(connection: aiosqlite.Connection) -> int:
    """The largest job id handed out so far: the AUTOINCREMENT sequence, or the table's own maximum."""
    rows = await connection.execute_fetchall(
        "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'jobs'), 0),"
        " COALESCE((SELECT MAX(id) FROM jobs), 0))"
    )
    return int(rows[0][0])
