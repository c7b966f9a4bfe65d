"""The data check at submit time: the worker's own reading and validation (`python -m trainer.data.check`),
in a short-lived subprocess with a deadline and a memory cap, so a broken file is refused in seconds
instead of after its wait in the queue, and a hostile one never runs in the bot process.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from bot.workers.environment import worker_environment
from bot.workers.process import LineTooLong, kill_worker, read_line, spawn_worker
from protocol.errors import ProtocolError, UserError
from protocol.events import DataChecked, Error, decode_check_result
from protocol.job_folder import JobFolder
from protocol.job_spec import JobSpec
from protocol.launch import Launch

MAX_ANSWER_BYTES = 1 << 16  # one line: a DataChecked or an Error with a message and a hint


@dataclass(kw_only=True, eq=False)  # identity, as before: two checkers are never "equal"
class DataChecker:
    timeout_s: float
    memory_mb: int
    log_path: Path
    staging_dir: Path
    python: str = ""
    module: str = "trainer.data.check"
    environ: Mapping[str, str] = field(default_factory=lambda: os.environ)
    cache_dir: Path | None = None  # the libraries' caches (a Hub dataset's download); None: the check's own

    def __post_init__(self) -> None:
        self.environ = dict(self.environ)  # a copy: what the caller's mapping becomes later is not ours

    async def check(self, spec: JobSpec, upload_dir: Path | None = None) -> DataChecked:
        """The data's format and row count, or UserError saying what is wrong with it. `upload_dir`: the
        folder an upload's source is relative to (where it is staged); None: the check's own."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        # Absolute: the check runs in this folder, so a relative staging folder would resolve twice.
        work = Path(tempfile.mkdtemp(prefix="check-", dir=self.staging_dir)).absolute()
        try:
            JobFolder(work).spec_file.write_text(spec.to_json(), encoding="utf-8")
            result = await self._run(
                work, Launch(job_dir=str(upload_dir or work)), spec.dataset.kind == "hub"
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)  # the spec and any download: nothing is kept
        if isinstance(result, Error):
            if result.kind == "user_error":
                raise UserError(result.message, result.hint)
            raise UserError(
                f"the dataset could not be checked ({result.message})",
                f"see {self.log_path}, or try again",
            )
        return result

    async def _run(self, work: Path, launch: Launch, hub: bool) -> DataChecked | Error:
        cache = self.cache_dir if self.cache_dir is not None else work / "cache"
        env = worker_environment(self.environ, hub_token=hub, cuda_visible_devices="", cache_root=cache)
        process = await spawn_worker(
            self.module,
            str(JobFolder(work).spec_file),
            str(work / "download"),
            str(self.memory_mb),
            *launch.argv(),
            python=self.python,
            log_path=self.log_path,
            env=env,
            cwd=work,  # nothing the person names resolves against the bot's own folder
            line_limit=MAX_ANSWER_BYTES,
        )
        try:
            line = await asyncio.wait_for(read_line(process), self.timeout_s)
            code = await asyncio.wait_for(process.wait(), self.timeout_s)
        except TimeoutError:
            raise UserError(
                f"checking the dataset took longer than {self.timeout_s:g} s (limits.data_check_timeout_s)",
                "use a smaller dataset, or ask an admin to raise the limit",
            ) from None
        except LineTooLong:  # an answer over MAX_ANSWER_BYTES
            return Error(kind="internal", message="the data check sent an oversized answer")
        finally:
            await kill_worker(process)  # its own group: a timeout or a cancel stops all of it
        try:
            return decode_check_result(line)
        except ProtocolError:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return Error(kind="internal", message=f"the data check {how} without an answer")
