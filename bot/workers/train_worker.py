"""Spawn one trainer worker and read its events: exec (never a shell), own process group, minimal env.

The worker's stdout carries protocol lines; its stderr goes straight to the job's log file. A worker
that breaks the protocol (garbage, an oversized line) ends with an `internal` error event; one that
dies without a final event (signal, segfault, OOM kill) ends with WorkerLost, which callers may retry.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.workers.process import LineTooLong, kill_worker, read_line, signal_worker, spawn_worker
from protocol.errors import ProtocolError
from protocol.events import Done, Error, Event, decode_event

# A progress line is ~300 bytes and `done` carries a small metrics dict; 1 MiB leaves room for
# growth while a runaway line still cannot eat the bot's memory.
MAX_EVENT_LINE_BYTES = 1 << 20


@dataclass(frozen=True)
class WorkerLost:
    """The worker ended without reporting a result: a crash, not a verdict on the job."""

    reason: str  # "killed by signal SIGKILL", "exited with code 1"
    log_path: Path

    def describe(self) -> str:
        return f"the worker {self.reason} without reporting a result"


class WorkerProcess:
    """One running `python -m trainer.training.worker SPEC.json --job-dir DIR ...` (protocol/launch.py)."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self.process = process
        self.log_path = log_path

    @classmethod
    async def start(
        cls,
        spec_path: Path,
        options: list[str],
        log_path: Path,
        env: Mapping[str, str],
        python: str = "",
        module: str = "trainer.training.worker",
        cwd: Path | None = None,
    ) -> WorkerProcess:
        """`options`: the launch (Launch.argv()). `cwd`: where the worker runs (its job folder), so nothing
        it resolves lands in the bot's folder."""
        process = await spawn_worker(
            module,
            str(spec_path),
            *options,
            python=python,
            log_path=log_path,
            env=env,
            cwd=cwd,
            line_limit=MAX_EVENT_LINE_BYTES,
        )
        return cls(process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def events(self) -> AsyncIterator[Event | WorkerLost]:
        """Every event the worker reports, ending with exactly one Done, Error or WorkerLost."""
        while True:
            try:
                line = await read_line(self.process)
            except LineTooLong:
                await kill_worker(self.process)
                yield self._broken(f"the worker sent an event line over {MAX_EVENT_LINE_BYTES} bytes")
                return
            if not line:
                break
            if not line.strip():
                continue
            try:
                event = decode_event(line)
            except ProtocolError as error:
                await kill_worker(self.process)
                yield self._broken(f"the worker broke the event protocol ({error})")
                return
            yield event
            if isinstance(event, (Done, Error)):
                await self.process.wait()
                return
        code = await self.process.wait()
        reason = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
        yield WorkerLost(reason=reason, log_path=self.log_path)

    def _broken(self, message: str) -> Error:
        return Error(kind="internal", message=message, hint=f"see the worker log {self.log_path}")

    def terminate(self) -> None:
        """Ask the worker to checkpoint and stop (SIGTERM to its whole group)."""
        signal_worker(self.process, signal.SIGTERM)

    def kill(self) -> None:
        signal_worker(self.process, signal.SIGKILL)
