"""Migration 0005: job specs stored before datasets had a kind get the kind their source had, so queued
and resumable jobs keep their files, and a name Discord could once point at a local file reads the Hub."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import aiosqlite

from protocol.job_spec import DatasetSpec, JobSpec
from storage.migrate import apply_migrations, load_migrations
from storage.store import Store


def old_spec_json(source: str, output_dir: str) -> str:
    """A spec as versions 3 and 4 stored it: no dataset.kind, the job folder and cache folder in it."""
    data = json.loads(JobSpec(base_model="m", dataset=DatasetSpec(source=source)).to_json())
    del data["dataset"]["kind"]
    data.update(output_dir=output_dir, cache_dir="/d/cache")
    return json.dumps(data)


async def test_old_specs_get_the_kind_their_source_had(tmp_path: Path):
    path = tmp_path / "old.db"
    async with aiosqlite.connect(path, isolation_level=None) as db:
        assert await apply_migrations(db, load_migrations()[:3]) == [1, 2, 3]
    old = [  # owner, source, output_dir -> kind, source after
        ("local:ann", "/home/ann/chat.jsonl", "/d/jobs/1", "file", "/home/ann/chat.jsonl"),
        ("discord:1", "/d/jobs/2/upload/dataset.jsonl", "/d/jobs/2", "upload", "upload/dataset.jsonl"),
        # A resume of job 2 read job 2's upload: it keeps reading it there.
        (
            "discord:1",
            "/d/jobs/2/upload/dataset.jsonl",
            "/d/jobs/3",
            "file",
            "/d/jobs/2/upload/dataset.jsonl",
        ),
        ("discord:1", "mlabonne/guanaco-llama2-1k", "/d/jobs/4", "hub", "mlabonne/guanaco-llama2-1k"),
        ("discord:1", "https://example.com/d.csv", "/d/jobs/5", "url", "https://example.com/d.csv"),
        ("discord:1", "private", "/d/jobs/6", "hub", "private"),  # was read from the bot's folder
    ]
    with sqlite3.connect(path) as db:
        for owner, source, output_dir, _kind, _source in old:
            db.execute(
                "INSERT INTO jobs (owner, name, spec, state, created_at) VALUES (?, 'a', ?, 'queued', 0)",
                (owner, old_spec_json(source, output_dir)),
            )
    async with await Store.open(path) as migrated:
        found = [(await migrated.get_job(job_id)).spec.dataset for job_id in range(1, len(old) + 1)]
    assert [(dataset.kind, dataset.source) for dataset in found] == [(kind, src) for *_, kind, src in old]
