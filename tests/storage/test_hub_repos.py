"""The record of the Hub repos qlora-bot created (migration 0004, storage/hub_repos.py), on real SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from storage.models import HubRepo
from storage.store import Store
from tests.service_helpers import fake_spec


async def test_a_created_repo_is_recorded_for_its_adapter_whatever_the_letter_case(tmp_path: Path):
    async with await Store.open(tmp_path / "db.sqlite", clock=lambda: 100.0) as store:
        job, _ = await store.create_job(owner="local:a", name="demo", spec=fake_spec(), jobs_dir=tmp_path)
        assert await store.hub_repos.created("alice/demo-1") is None
        recorded = await store.hub_repos.record_created("alice/Demo-1", adapter="demo-1", job_id=job.id)
        assert recorded == HubRepo("alice/Demo-1", "demo-1", job.id, 100.0)
        # The Hub treats ALICE/demo-1 as the same repo: so does the record.
        assert await store.hub_repos.created("ALICE/demo-1") == recorded
        # A create that succeeded again means the old repo is gone: the new one belongs to its adapter.
        by_hand = await store.hub_repos.record_created("alice/demo-1", adapter="folder:/x", job_id=None)
        assert by_hand == HubRepo("alice/demo-1", "folder:/x", None, 100.0)
        assert await store.hub_repos.created("alice/DEMO-1") == by_hand
    with sqlite3.connect(tmp_path / "db.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM hub_repos").fetchone()[0] == 1
        columns = {row[1] for row in db.execute("PRAGMA table_info(hub_repos)")}
        assert columns == set(HubRepo.__dataclass_fields__)
        assert {row[2] for row in db.execute("PRAGMA foreign_key_list(hub_repos)")} == {"jobs"}
