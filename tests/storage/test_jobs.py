"""storage/jobs.py: creating jobs (the spec built for its id, one job per idempotency key) and reading,
listing and counting them, against real SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.store import Store
from tests.storage.helpers import FakeClock, new_job, running_job, spec_maker


async def test_create_job_stores_the_spec_built_for_its_id(store: Store, clock: FakeClock):
    job = await new_job(store, owner="local:alice", name="guanaco", guild_id=7, channel_id=8)
    assert job.folder == f"/data/jobs/{job.id}"
    assert (job.state, job.attempt, job.phase, job.hub_state) == ("queued", 1, None, "none")
    assert (job.owner, job.name, job.guild_id, job.channel_id) == ("local:alice", "guanaco", 7, 8)
    assert job.created_at == clock.now
    assert not job.is_terminal
    assert await store.get_job(job.id) == job
    assert await store.get_job(job.id + 100) is None


async def test_the_same_idempotency_key_creates_one_job(store: Store):
    first, created = await store.create_job(
        owner="discord:1", name="a", **spec_maker(), idempotency_key="interaction:99"
    )
    again, created_again = await store.create_job(
        owner="discord:1", name="b", **spec_maker("other"), idempotency_key="interaction:99"
    )
    assert (created, created_again) == (True, False)
    assert again == first
    assert await store.job_by_idempotency_key("interaction:99") == first
    assert await store.job_by_idempotency_key("interaction:100") is None
    assert len(await store.list_jobs()) == 1
    # Jobs without a key never collide with each other.
    await new_job(store)
    await new_job(store)
    assert len(await store.list_jobs()) == 3


async def test_a_failing_spec_builder_creates_nothing(store: Store):
    def broken(folder: Path) -> None:
        raise RuntimeError("no room for the job folder")

    with pytest.raises(RuntimeError):
        await store.create_job(
            owner="discord:1", name="a", **spec_maker(), prepare_folder=broken, idempotency_key="k"
        )
    assert await store.list_jobs() == []
    job, created = await store.create_job(owner="discord:1", name="a", **spec_maker(), idempotency_key="k")
    assert created and job.idempotency_key == "k"


# ---------------------------------------------------------------------------------------------
# Listing and counting


async def test_list_and_count_filter_by_owner_state_and_time(store: Store, clock: FakeClock):
    alice_old = await new_job(store, owner="local:alice")
    clock.advance(3600)
    bob = await running_job(store, owner="discord:2")
    clock.advance(3600)
    alice_new = await running_job(store, owner="local:alice")
    alice_queued = await new_job(store, owner="local:alice")
    await store.finish_job(alice_new.id, "succeeded")

    assert [job.id for job in await store.list_jobs()] == [
        alice_queued.id,
        alice_new.id,
        bob.id,
        alice_old.id,
    ]
    assert [job.id for job in await store.list_jobs(limit=2)] == [alice_queued.id, alice_new.id]
    assert [job.id for job in await store.list_jobs(owner="local:alice", states=["queued"])] == [
        alice_queued.id,
        alice_old.id,
    ]
    assert [job.id for job in await store.list_jobs(states=["running"])] == [bob.id]
    assert await store.list_jobs(states=[]) == []
    with pytest.raises(ValueError, match="unknown job state"):
        await store.list_jobs(states=["queud"])

    assert await store.count_jobs(owner="local:alice") == 3
    assert await store.count_jobs(owner="local:alice", states=["queued", "running"]) == 2
    assert await store.count_jobs(owner="local:alice", since=clock.now - 60) == 2
    assert await store.count_jobs(owner="local:alice", states=["queued"], since=clock.now - 60) == 1
    assert await store.count_jobs(owner="nobody") == 0

    assert [job.id for job in await store.queued_jobs()] == [alice_old.id, alice_queued.id]
    assert [job.id for job in await store.running_jobs()] == [bob.id]


async def test_recent_runtimes_of_succeeded_jobs(store: Store, clock: FakeClock):
    for seconds, state in ((100, "succeeded"), (50, "failed"), (200, "succeeded"), (300, "succeeded")):
        job = await running_job(store)
        clock.advance(seconds)
        await store.finish_job(job.id, state)
    assert await store.recent_runtimes() == [300.0, 200.0, 100.0]
    assert await store.recent_runtimes(limit=2) == [300.0, 200.0]


async def test_last_start_times_per_person(store: Store, clock: FakeClock):
    await new_job(store, owner="discord:3")  # never started: absent
    await running_job(store, owner="discord:1")
    clock.advance(10)
    await running_job(store, owner="discord:2")
    clock.advance(10)
    await running_job(store, owner="discord:1")
    assert await store.last_start_times() == {"discord:1": clock.now, "discord:2": clock.now - 10}
