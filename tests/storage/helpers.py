"""The storage tests' shared parts: a clock that moves only when told, the spec a job gets for its id, and
jobs made queued or running (the fixtures are in tests/storage/conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from protocol.job_spec import DatasetSpec, JobSpec
from storage.models import Job
from storage.store import Store


class FakeClock:
    """Time that moves only when a test says so."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def spec_maker(base_model: str = "tiny-llama") -> dict[str, Any]:
    """The spec and where its job goes (jobs/ID), as create_job takes them."""
    spec = JobSpec(base_model=base_model, dataset=DatasetSpec(source="data.jsonl", format="messages"))
    return {"spec": spec, "jobs_dir": Path("/data/jobs")}


async def new_job(store: Store, owner: str = "discord:1", name: str = "adapter", **kwargs) -> Job:
    job, created = await store.create_job(owner=owner, name=name, **spec_maker(), **kwargs)
    assert created
    return job


async def running_job(store: Store, **kwargs) -> Job:
    job = await new_job(store, **kwargs)
    started = await store.start_job(job.id, slot="cpu", resumed_from=None)
    assert started is not None
    return started
