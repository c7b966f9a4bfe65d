"""A full disk under the data directory: recognising it, and keeping room to record what it did.

When the disk fills, the write that fails is usually the one that would record the failure (the job's
last event, its end). So the database keeps a small reserve file beside it; the first write refused
for lack of space gives the reserve back, which leaves room for the few writes that end the job with a
clear reason, and the reserve is taken again once there is space.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
from pathlib import Path

RESERVE_BYTES = 2 << 20  # a few WAL frames are all that ending a job takes; 2 MiB leaves ample room
RESERVE_NAME = ".qlora-bot-reserve"


class DiskFull(OSError):
    """No space left under the data directory; the message names the folder."""

    def __init__(self, folder: Path) -> None:
        super().__init__(errno.ENOSPC, f"disk full under {folder}")
        self.folder = folder

    def __str__(self) -> str:
        return f"disk full under {self.folder}"


def is_disk_full(error: BaseException) -> bool:
    """SQLite's "database or disk is full", or a file write's ENOSPC."""
    if isinstance(error, DiskFull):
        return True
    if isinstance(error, sqlite3.OperationalError):
        return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


class DiskReserve:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / RESERVE_NAME

    def take(self) -> bool:
        """Make sure the reserve exists; False when there is no room for it now (try again later)."""
        try:
            if self.path.stat().st_size == RESERVE_BYTES:
                return True
        except FileNotFoundError:
            pass
        if shutil.disk_usage(self.folder).free < RESERVE_BYTES * 4:
            return False  # the room given back is for recording the failure, not for a new reserve
        try:
            with open(self.path, "wb") as reserve:
                # Written, not truncated to size: a sparse file would hold no blocks to give back.
                reserve.write(b"\0" * RESERVE_BYTES)
                reserve.flush()
                os.fsync(reserve.fileno())
            return True
        except OSError as error:
            if not is_disk_full(error):
                raise
            self.give_back()  # a partial reserve would only take the last free blocks
            return False

    def give_back(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
