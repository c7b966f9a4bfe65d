"""The data check at submit time: the worker's own reading and validation (`python -m trainer.data.check`),
in a short-lived subprocess with a deadline and a memory cap, so a broken file is refused in seconds
instead of after its wait in the queue, and a hostile one never runs in the bot process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from bot.workers.environment import worker_environment
from protocol.errors import ProtocolError, UserError
from protocol.events import DataChecked, Error, decode_check_result
from protocol.job_spec import JobSpec

MAX_ANSWER_BYTES = 1 << 16  # one line: a DataChecked or an Error with a message and a hint


class DataChecker:
    def __init__(
        self,
        *,
        timeout_s: float,
        memory_mb: int,
        log_path: Path,
        staging_dir: Path,
        python: str = "",
        module: str = "trainer.data.check",
        environ: Mapping[str, str] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.memory_mb = memory_mb
        self.log_path = log_path
        self.staging_dir = staging_dir
        self.python = python
        self.module = module
        self.environ = dict(os.environ if environ is None else environ)
        self.cache_dir = cache_dir  # the libraries' caches (a Hub dataset's download); None: the check's own

    async def check(self, spec: JobSpec) -> DataChecked:
        """The data's format and row count, or UserError saying what is wrong with it."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # Absolute: the check runs in this folder, so a relative staging folder would resolve twice.
        work = Path(tempfile.mkdtemp(prefix="check-", dir=self.staging_dir)).absolute()
        try:
            (work / "spec.json").write_text(spec.to_json(), encoding="utf-8")
            result = await self._run(work, spec.dataset.kind == "hub")
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

    async def _run(self, work: Path, hub: bool) -> DataChecked | Error:
        cache = self.cache_dir if self.cache_dir is not None else work / "cache"
        env = worker_environment(self.environ, hub_token=hub, cuda_visible_devices="", cache_root=cache)
        with open(self.log_path, "ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                self.python or sys.executable,
                "-m",
                self.module,
                str(work / "spec.json"),
                str(work / "download"),
                str(self.memory_mb),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                env=env,
                cwd=work,  # nothing the person names resolves against the bot's own folder
                start_new_session=True,  # its own group: a timeout or a cancel stops all of it
                limit=MAX_ANSWER_BYTES,
            )
        try:
            line = await asyncio.wait_for(process.stdout.readline(), self.timeout_s)
            code = await asyncio.wait_for(process.wait(), self.timeout_s)
        except TimeoutError:
            raise UserError(
                f"checking the dataset took longer than {self.timeout_s:g} s (limits.data_check_timeout_s)",
                "use a smaller dataset, or ask an admin to raise the limit",
            ) from None
        except ValueError:  # an answer over MAX_ANSWER_BYTES
            return Error(kind="internal", message="the data check sent an oversized answer")
        finally:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        try:
            return decode_check_result(line)
        except ProtocolError:
            how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
            return Error(kind="internal", message=f"the data check {how} without an answer")
