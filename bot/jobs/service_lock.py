"""One job runner per data directory: an advisory file lock that dies with its process.

The bot and `qlora-bot train` may both want to run jobs from the same database; the first one holds
the lock and runs the queue, the other only submits and follows (the database is the queue).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from protocol.errors import UserError


class RunnerLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "runner.lock"
        self._handle = None

    def try_acquire(self) -> bool:
        if self._handle is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for as long as we run jobs
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            return False
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        self._handle = handle
        return True

    def holder_pid(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


class RunnerBusy(UserError):
    """Another live qlora-bot process holds the runner lock of this data directory."""

    def __init__(self, holder_pid: int | None) -> None:
        who = f"pid {holder_pid}" if holder_pid else "another process"
        super().__init__(
            f"another qlora-bot process ({who}) already runs the job queue of this data directory",
            "stop it first, or set QLORA_BOT_HOME to another data directory",
        )
        self.holder_pid = holder_pid
