"""Build a JobService on a temp database with the fake (or real) trainer, for the job tests."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.config import Config, PathsConfig, QueueConfig, WorkerConfig
from bot.hub.access import HubAccess
from bot.jobs.executor import LocalExecutor
from bot.jobs.scheduler import build_slots
from bot.jobs.service import JobService
from bot.jobs.submission import default_data_checker
from bot.workers.data_check import DataChecker
from protocol.job_spec import DatasetSpec, JobSpec, TrainingSpec
from storage.store import Store

FAKES = Path(__file__).resolve().parent / "fakes"


def make_config(data_dir: Path, **queue: Any) -> Config:
    return Config(
        paths=PathsConfig(data_dir=str(data_dir)),
        worker=WorkerConfig(cancel_grace_s=10.0),
        queue=dataclasses.replace(QueueConfig(), **queue),
    )


def fake_executor() -> LocalExecutor:
    environ = {**os.environ, "PYTHONPATH": str(FAKES)}
    return LocalExecutor(environ, module="fake_trainer")


def fake_data_checker(config: Config, **limits: Any) -> DataChecker:
    """The real DataChecker running tests/fakes/fake_check_data.py (fake: datasets pass, real ones are
    checked for real)."""
    checker = default_data_checker(config)
    checker.module = "fake_check_data"
    checker.environ = {**os.environ, "PYTHONPATH": str(FAKES)}
    for name, value in limits.items():
        setattr(checker, name, value)
    return checker


def fake_spec(behaviour: str = "", name: str = "demo", checkpoint_steps: int = 2) -> JobSpec:
    return JobSpec(
        base_model="fake/model",
        dataset=DatasetSpec(source=f"fake:{behaviour}", kind="file"),  # read by the fakes only
        training=TrainingSpec(checkpoint_steps=checkpoint_steps),
        name=name,
    )


async def open_service(
    data_dir: Path,
    executor: LocalExecutor | None = None,
    slots: int = 1,
    hub: HubAccess | None = None,
    start: bool = True,
    **queue: Any,
) -> JobService:
    """A service on the data dir; with `start`, it holds the runner lock and runs the queue."""
    config = make_config(data_dir, **queue)
    store = await Store.open(config.database_path(), jobs_dir=config.jobs_dir())
    service = JobService(store, config, hub=hub, data_checker=fake_data_checker(config))
    devices = [str(i) for i in range(slots)] if slots > 1 else []  # one slot: the CPU, as on CI
    if start:
        await service.start_runner(executor or fake_executor(), build_slots(devices, 1))
    return service


async def shut(service: JobService, grace_s: float | None = None) -> None:
    await service.close(grace_s)
    await service.store.close()


async def wait_until(check: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """Poll `check` until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.05)
    raise TimeoutError("condition not met in time")


async def finished(service: JobService, job_id: int, timeout: float = 60.0):
    async def check():
        job = await service.get(job_id)
        return job if job.is_terminal else None

    return await wait_until(check, timeout)
