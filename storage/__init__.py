"""SQLite storage for jobs, attempts, events and adapters: the only package that speaks SQL."""

from storage.migrate import MigrationError
from storage.models import TERMINAL_STATES, Adapter, Attempt, HubState, Job, JobState, StoredEvent
from storage.store import AdapterNameTaken, Store

__all__ = [
    "TERMINAL_STATES",
    "Adapter",
    "AdapterNameTaken",
    "Attempt",
    "HubState",
    "Job",
    "JobState",
    "MigrationError",
    "Store",
    "StoredEvent",
]
