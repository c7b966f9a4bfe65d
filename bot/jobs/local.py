"""Wiring for one machine: open the store, find the slots, and say who the terminal user is."""

from __future__ import annotations

import contextlib
import getpass
from collections.abc import AsyncIterator

from bot.config import Config, Secrets
from bot.hub.access import HubAccess
from bot.jobs.scheduler import Slot, build_slots, detect_gpus
from bot.jobs.service import JobService, Requester
from storage.store import Store


def configured_slots(config: Config) -> list[Slot]:
    """The configured GPUs, else what nvidia-smi lists (when detect is on), else one CPU slot."""
    devices = list(config.gpus.devices) or (detect_gpus() if config.gpus.detect else [])
    return build_slots(devices, config.gpus.jobs_per_device)


def terminal_requester() -> Requester:
    """Whoever can run the command line on this machine owns its data directory: an admin, who may name
    its files and folders."""
    return Requester(owner=f"local:{getpass.getuser()}", is_admin=True, on_this_machine=True)


async def open_store(config: Config) -> Store:
    """This machine's job database; new job ids continue above the job folders already on disk."""
    return await Store.open(config.database_path(), jobs_dir=config.jobs_dir())


@contextlib.asynccontextmanager
async def open_service(config: Config) -> AsyncIterator[JobService]:
    """A JobService on this machine's database, closed (workers checkpointed) on the way out."""
    async with await open_store(config) as store:
        service = JobService(store, config, hub=HubAccess.for_config(config, Secrets.from_env().hf_token))
        try:
            yield service
        finally:
            await service.close()
