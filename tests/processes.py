"""Finding the processes a test left behind: a detached serve worker outlives the `ask` that started it
(until its idle timeout), so a test stops it by what its command line names, as /proc shows it."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path


def processes_naming(text: str) -> list[int]:
    """The pids whose command line contains `text` (a path under the test's own folder)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile
                continue
    return pids


def stop_processes_naming(text: str) -> None:
    """SIGKILL the process group of each (a detached worker leads its own session)."""
    for pid in processes_naming(text):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
