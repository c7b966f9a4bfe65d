"""Migration 0006: a job's folder moves out of its stored spec into the jobs table's folder column, and the
cache folder is dropped from the spec, so jobs stored before keep their folders and their specs decode."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import aiosqlite

from storage.migrate import apply_migrations, load_migrations
from storage.store import Store
from tests.test_migration_dataset_kind import old_spec_json


async def test_old_specs_give_their_folder_to_the_column(tmp_path: Path):
    path = tmp_path / "old.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await apply_migrations(db, load_migrations()[:5]) == [1, 2, 3, 4, 5]
    resumed = json.loads(old_spec_json("org/data", "/d/jobs/2"))
    resumed["resume_from"] = "/d/jobs/1/checkpoints/checkpoint-4"  # what was asked: it stays
    specs = [old_spec_json("org/data", "/d/jobs/1"), json.dumps(resumed)]
    with sqlite3.connect(path) as db:
        for spec in specs:
            db.execute(
                "INSERT INTO jobs (owner, name, spec, state, created_at)"
                " VALUES ('local:ann', 'a', ?, 'failed', 0)",
                (spec,),
            )
    async with await Store.open(path) as migrated:
        first, second = [await migrated.get_job(job_id) for job_id in (1, 2)]
        assert (first.folder, second.folder) == ("/d/jobs/1", "/d/jobs/2")
        assert (first.spec.resume_from, second.spec.resume_from) == (
            None,
            "/d/jobs/1/checkpoints/checkpoint-4",
        )
        assert first.spec.dataset.source == "org/data" and first.spec.base_model == "m"
        assert await migrated.job_in_folder("/d/jobs/2") == second
        assert await migrated.jobs_resuming_from("/d/jobs/1/checkpoints/checkpoint-4") == [second]
    with sqlite3.connect(path) as db:
        stored = [json.loads(row[0]) for row in db.execute("SELECT spec FROM jobs ORDER BY id")]
    assert all("output_dir" not in spec and "cache_dir" not in spec for spec in stored)
