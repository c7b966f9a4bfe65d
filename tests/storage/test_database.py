"""storage/database.py: what opening a database checks (job ids above the job folders, empty or unreadable
files refused with what to do) and two Stores on one file, as the bot and the CLI would be."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from protocol.events import Phase
from storage.database import DatabaseUnusable
from storage.store import Store
from tests.storage.helpers import FakeClock, new_job, spec_maker


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
