"""The plumbing every worker subprocess shares (training, serve, data check): exec of `python -m MODULE`
(never a shell) in its own process group with stderr appended to its log, stdout read line by line under
a raised limit, and signals sent to the whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Mapping
from pathlib import Path

Process = asyncio.subprocess.Process


class LineTooLong(Exception):
    """The worker sent a line over the stream's limit: what follows can no longer be read as lines."""


async def spawn_worker(
    module: str,
    *args: str,
    python: str,
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path | None,
    line_limit: int,
    stdin_pipe: bool = False,
) -> Process:
    """Start `python -m module args...` (`python` "" : this interpreter) with `env` only, in `cwd`, its
    stdout a pipe of lines up to `line_limit` bytes, its stdin a pipe with `stdin_pipe` (else nothing)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log_file:
        return await asyncio.create_subprocess_exec(
            python or sys.executable,
            "-m",
            module,
            *args,
            stdin=asyncio.subprocess.PIPE if stdin_pipe else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            env=dict(env),
            cwd=cwd,  # nothing the worker resolves lands in the bot's folder
            start_new_session=True,  # its own process group: a signal to it reaches its children too
            limit=line_limit,
        )


async def read_line(process: Process) -> bytes:
    """The worker's next stdout line, b"" once it closed stdout; LineTooLong for one over the limit."""
    assert process.stdout is not None
    try:
        return await process.stdout.readline()
    except (ValueError, asyncio.LimitOverrunError):
        raise LineTooLong from None


def signal_group(pid: int, signum: int) -> None:
    """Signal the process group `pid` leads (each worker leads its own), if there still is one."""
    # ProcessLookupError: it exited meanwhile; PermissionError: the pid of a worker an earlier bot
    # process started has been reused by a process that is not ours.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def signal_worker(process: Process, signum: int) -> None:
    """Signal a worker's whole group, unless it has been reaped (its pid may be someone else's by now)."""
    if process.returncode is None:
        signal_group(process.pid, signum)


async def kill_worker(process: Process) -> int:
    """SIGKILL the worker's group if it still runs, and reap it: its exit code."""
    signal_worker(process, signal.SIGKILL)
    return await process.wait()
