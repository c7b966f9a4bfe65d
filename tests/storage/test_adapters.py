"""storage/adapters.py: adapters known by a unique name, listed newest first, with their Hub repo."""

from __future__ import annotations

import pytest

from storage.store import AdapterNameTaken, Store
from tests.storage.helpers import FakeClock, new_job


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
