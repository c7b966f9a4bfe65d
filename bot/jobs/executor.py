"""How a job's worker is started and stopped: the Executor interface and the local subprocess executor.

A remote executor (Ray) implements the same two methods; the runner never knows which it has.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Protocol

from bot.jobs.scheduler import Slot
from bot.workers.environment import job_uses_hub, worker_environment
from bot.workers.process import signal_group
from bot.workers.train_worker import WorkerLost, WorkerProcess
from protocol.events import Event
from protocol.job_folder import JobFolder
from protocol.job_spec import JobSpec
from protocol.launch import Launch


class RunningWorker(Protocol):
    """A started attempt: its events end with Done, Error or WorkerLost."""

    @property
    def pid(self) -> int | None: ...

    def events(self) -> AsyncIterator[Event | WorkerLost]: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class Executor(Protocol):
    async def launch(self, spec: JobSpec, launch: Launch, slot: Slot) -> RunningWorker:
        """Start the worker for one attempt of a job on `slot`, in the folder `launch` names."""
        ...

    async def stop_orphan(self, job_dir: Path, pid: int | None, grace_s: float) -> bool:
        """Stop a worker left behind by an earlier bot process; True if one was running."""
        ...


class LocalExecutor:
    """One `python -m trainer.training.worker SPEC.json --job-dir DIR ...` subprocess per attempt, here."""

    def __init__(
        self,
        environ: Mapping[str, str] | None = None,
        python: str = "",
        module: str = "trainer.training.worker",
    ):
        self.environ = dict(os.environ if environ is None else environ)
        self.python = python
        self.module = module

    async def launch(self, spec: JobSpec, launch: Launch, slot: Slot) -> RunningWorker:
        folder = JobFolder(Path(launch.job_dir))
        folder.path.mkdir(parents=True, exist_ok=True)
        folder.spec_file.write_text(spec.to_json(), encoding="utf-8")
        env = worker_environment(
            self.environ,
            hub_token=job_uses_hub(spec),
            cuda_visible_devices=slot.cuda_visible_devices,
            # The runner hands over the data directory's cache folder; a launch without one keeps the
            # libraries' caches in the job's own folder.
            cache_root=Path(launch.cache_dir) if launch.cache_dir else folder.path / "cache",
        )
        return await WorkerProcess.start(
            folder.spec_file, launch.argv(), folder.log, env, self.python, self.module, cwd=folder.path
        )

    async def stop_orphan(self, job_dir: Path, pid: int | None, grace_s: float) -> bool:
        spec_path = str(JobFolder(job_dir).spec_file)
        if pid is None or not _is_live_worker(pid, spec_path):
            return False
        # SIGTERM first: the worker saves a checkpoint before it exits (if it can still write).
        signal_group(pid, signal.SIGTERM)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while loop.time() < deadline and _is_live_worker(pid, spec_path):
            await asyncio.sleep(0.2)
        signal_group(pid, signal.SIGKILL)
        return True


def _is_live_worker(pid: int, spec_path: str) -> bool:
    """Whether `pid` is still our worker for this spec (pids are reused; zombies are dead)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = status.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and spec_path.encode() in cmdline
