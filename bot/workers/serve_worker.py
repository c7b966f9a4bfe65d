"""The bot's side of the serve worker: start it on first use, route its events, stop it when idle.

One long-lived `python -m trainer.serving.worker` per bot process holds the base models and an LRU of
adapters. If it dies, every pending ask fails with a clear message and the next ask starts a new
one; one that holds asks but says nothing for longer than their timeout plus `silence_grace_s` is
stuck, and is killed to the same end. After `idle_timeout_s` without asks it exits, giving the GPU
back to training. It runs in its own folder, with the Hub offline and no HF_TOKEN until an ask's base
model has to come from the Hub. With `socket_dir` it also listens on its Unix socket there
(serve_socket.py), so `qlora-bot ask` on this machine uses this loaded worker rather than loading another;
such a shared worker keeps its own idle time (it alone sees the asks of every client) and exits by itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from bot.config import ServeConfig
from bot.workers.environment import uses_hub, worker_environment
from bot.workers.process import LineTooLong, read_line, signal_worker, spawn_worker
from protocol.serve import (
    STOPPED_IDLE,
    Cancel,
    Failed,
    Finished,
    Generate,
    Ready,
    ServeEvent,
    ServeProtocolError,
    Shutdown,
    decode_event,
    encode,
)

log = logging.getLogger(__name__)
MAX_LINE_BYTES = 1 << 22  # a finished answer carries its whole text
START_TIMEOUT_S = 600.0  # importing torch and building the process; models load per request
# The worker fails an ask itself once its timeout passes, at its next step; silence beyond that by this
# much means no step comes: it is stuck (in a kernel, a lock, a loop no deadline reaches). Loading a base
# model is one silent step: a load that outlasts an ask's whole timeout and this grace is stopped too.
SILENCE_GRACE_S = 60.0


def limit_flags(config: ServeConfig) -> list[str]:
    """The serve limits on a worker's command line, for the bot's worker and a shared one alike (two
    workers are interchangeable only when these match: serve_socket.socket_key hashes them)."""
    return [
        "--max-adapters", str(config.max_adapters),
        "--max-adapter-mb", str(config.max_adapter_mb),
        "--max-batch", str(config.max_batch),
    ]  # fmt: skip


def could_not_start(request_id: str, error: BaseException, log_path: Path) -> Failed:
    """What an ask is told when no worker could be started for it."""
    return Failed(
        id=request_id,
        kind="internal",
        message=f"the serve worker could not start: {error}",
        hint=f"see its log {log_path}",
    )


@dataclass(frozen=True)
class Waiting:
    """Not from the worker: the ask waits (for the GPU, say) and the person should know why."""

    reason: str


class ServeClient:
    def __init__(
        self,
        config: ServeConfig,
        log_path: Path,
        *,
        environ: Mapping[str, str] | None = None,
        python: str = "",
        module: str = "trainer.serving.worker",
        cuda_visible_devices: str | None = None,
        gpu_wait: Callable[[], Awaitable[str | None]] | None = None,
        work_dir: Path | None = None,
        cache_dir: Path | None = None,
        silence_grace_s: float = SILENCE_GRACE_S,
        socket_dir: Path | None = None,
    ) -> None:
        """`work_dir`: where the worker runs (a folder of its own under the data directory; default beside
        the log); `cache_dir`: its libraries' caches (default: inside `work_dir`)."""
        self.config = config
        self.log_path = log_path
        self.work_dir = work_dir if work_dir is not None else log_path.parent / "serve"
        self.cache_dir = cache_dir if cache_dir is not None else self.work_dir / "cache"
        self.environ = dict(os.environ if environ is None else environ)
        self.python = python or sys.executable
        self.module = module
        self.cuda_visible_devices = cuda_visible_devices
        self.gpu_wait = gpu_wait
        self.silence_grace_s = silence_grace_s
        self.socket_dir = socket_dir
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task | None = None
        self._pending: dict[str, asyncio.Queue] = {}
        self._start_lock = asyncio.Lock()
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_task: asyncio.Task | None = None
        self._online = False  # whether the running worker may reach the Hub (and holds HF_TOKEN)
        self._sent: set[str] = set()  # the requests the running worker was given
        self._outstanding: dict[str, float] = {}  # asks sent to the worker and not ended: their timeout_s
        self._last_heard = 0.0  # loop time of its last line, or of a send that found it with nothing to do
        self._stopped_why: dict[int, str] = {}  # by pid: why this client killed it, for the asks it held
        self.starts = 0  # how many workers were started: a test and the logs care

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def generate(self, request: Generate) -> AsyncIterator[ServeEvent | Waiting]:
        """The events of one request, ending after its last Finished (two with compare) or a Failed."""
        while self.gpu_wait is not None and (reason := await self.gpu_wait()):
            yield Waiting(reason)
            await asyncio.sleep(2.0)
        # A base model by Hub id is downloaded by the worker: only then does it get the Hub and the token.
        hub = uses_hub(request.base_model)
        while hub and self.running and not self._online and self._pending:
            yield Waiting("the serve worker restarts to reach the Hub once the asks it is answering end")
            await asyncio.sleep(0.5)
        queue: asyncio.Queue = asyncio.Queue()
        self._pending[request.id] = queue
        self._cancel_idle_timer()
        expected = 2 if request.compare else 1
        ended = False
        try:
            for attempt in (1, 2):  # a second only when a shared worker stopped as idle as this ask came
                try:
                    await self._ensure_started(hub)
                except (ConnectionError, TimeoutError, OSError) as error:
                    yield could_not_start(request.id, error, self.log_path)
                    return
                event = await self._first_event(request, queue)
                if not (attempt == 1 and isinstance(event, Failed) and event.message == STOPPED_IDLE):
                    break
                log.info("the serve worker stopped as idle as an ask came: starting another for it")
                self._sent.discard(request.id)  # its reader must not fail this ask a second time
                await self._stop_worker()  # it is gone: wait for its reader, so the next start is clean
                while not queue.empty():  # anything that old worker still said of it
                    queue.get_nowait()
            while True:
                if isinstance(event, Finished):
                    expected -= 1
                    ended = expected == 0
                ended = ended or isinstance(event, Failed)
                yield event
                if ended:
                    break
                event = await self._next_event(queue)
        finally:
            self._pending.pop(request.id, None)
            self._sent.discard(request.id)
            self._outstanding.pop(request.id, None)
            if not ended and self.running:  # the asker went away: stop spending the GPU on it
                with contextlib.suppress(Exception):
                    await self._send(encode(Cancel(id=request.id)))
            self._arm_idle_timer()

    async def _first_event(self, request: Generate, queue: asyncio.Queue) -> ServeEvent:
        """Send the request to the running worker and wait for its first event."""
        self._sent.add(request.id)
        if not self._outstanding:
            self._last_heard = asyncio.get_running_loop().time()  # it had nothing to say until now
        self._outstanding[request.id] = request.timeout_s
        try:
            await self._send(encode(request))
        except (ConnectionError, OSError):  # it exited before it read this (a shared one times itself)
            return Failed(id=request.id, kind="cancelled", message=STOPPED_IDLE)
        return await self._next_event(queue)

    async def _next_event(self, queue: asyncio.Queue) -> ServeEvent:
        """The next event for one ask; kills the worker when it has been silent too long (its reader then
        fails every ask it held, this one included)."""
        loop = asyncio.get_running_loop()
        while True:
            limit = max(self._outstanding.values(), default=0.0) + self.silence_grace_s
            try:
                return await asyncio.wait_for(queue.get(), max(0.05, self._last_heard + limit - loop.time()))
            except TimeoutError:
                silent = loop.time() - self._last_heard
                if silent >= limit:
                    self._stop_silent_worker(silent, limit - self.silence_grace_s)

    def _stop_silent_worker(self, silent: float, timeout: float) -> None:
        process = self._process
        if process is None or process.returncode is not None or process.pid in self._stopped_why:
            return
        why = (
            f"the serve worker stopped answering: nothing from it for {silent:.0f} s, longer than the "
            f"{timeout:g} s an answer may take, so it was stopped"
        )
        log.error("%s (pid %s)", why, process.pid)
        self._stopped_why[process.pid] = why
        signal_worker(process, signal.SIGKILL)  # its own session: the template child goes too

    async def cancel(self, request_id: str) -> None:
        if self.running:
            await self._send(encode(Cancel(id=request_id)))

    async def close(self) -> None:
        self._cancel_idle_timer()
        await self._stop_worker()

    # --- the worker process

    async def _ensure_started(self, hub: bool) -> None:
        async with self._start_lock:
            if self.running and hub and not self._online:
                await self._stop_worker()
            if self.running:
                return
            self.work_dir.mkdir(parents=True, exist_ok=True)
            config = self.config
            env = worker_environment(
                self.environ,
                hub_token=hub,
                cuda_visible_devices=self.cuda_visible_devices,
                cache_root=self.cache_dir,
            )
            sent: set[str] = set()
            self._process = await spawn_worker(
                self.module,
                *limit_flags(config),
                *self._socket_flags(hub),
                python=self.python,
                log_path=self.log_path,
                env=env,
                cwd=self.work_dir,
                line_limit=MAX_LINE_BYTES,
                stdin_pipe=True,  # the requests
            )  # fmt: skip
            self._online, self._sent = hub, sent
            self.starts += 1
            ready = asyncio.get_running_loop().create_future()
            self._reader = asyncio.create_task(self._read(self._process, ready, sent), name="serve-reader")
            await asyncio.wait_for(ready, START_TIMEOUT_S)
            log.info("serve worker started (pid %s, Hub %s)", self._process.pid, "on" if hub else "off")

    def _socket_flags(self, hub: bool) -> list[str]:
        """--socket PATH when this worker is to be shared, with --idle-timeout-s: this client sees only its
        own asks, so an idle timer here would stop the worker under a terminal `ask` it is answering."""
        if self.socket_dir is None:
            return []
        from bot.workers.serve_socket import prepare_socket_dir, socket_key, socket_path  # it imports us

        prepare_socket_dir(self.socket_dir)
        key = socket_key(
            self.config, python=self.python, module=self.module, device=self.cuda_visible_devices, hub=hub
        )
        path = socket_path(self.socket_dir, key)
        return ["--socket", str(path), "--idle-timeout-s", str(self.config.idle_timeout_s)]

    async def _stop_worker(self) -> None:
        """Ask the worker to exit (killed after 30 s) and wait for its reader: on close, and to restart a
        worker started without the Hub once an ask needs it (generate() waited for its asks to end)."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            with contextlib.suppress(Exception):
                await self._send(encode(Shutdown()))
            try:
                await asyncio.wait_for(process.wait(), 30)
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        self._process = None

    async def _send(self, line: str) -> None:
        process = self._process
        if process is None or process.stdin is None:
            raise ConnectionError("the serve worker is not running")
        process.stdin.write(line.encode() + b"\n")
        await process.stdin.drain()

    async def _read(self, process: asyncio.subprocess.Process, ready: asyncio.Future, sent: set[str]) -> None:
        try:
            while line := await read_line(process):
                self._last_heard = asyncio.get_running_loop().time()
                try:
                    event = decode_event(line)
                except ServeProtocolError as error:
                    log.error("serve worker broke the protocol: %s", error)
                    process.kill()
                    break
                if isinstance(event, Ready):
                    if not ready.done():
                        ready.set_result(event)
                    continue
                queue = self._pending.get(getattr(event, "id", ""))
                if queue is not None:
                    queue.put_nowait(event)
        except (LineTooLong, ValueError):  # ValueError: a line json cannot even parse (a 5000-digit number)
            log.error("serve worker sent an oversized line")
            process.kill()
        code = await process.wait()
        if not ready.done():
            ready.set_exception(ConnectionError(f"the serve worker exited with code {code} while starting"))
        why = self._stopped_why.pop(process.pid, None)
        if why is None and code == 0 and self.socket_dir is not None:
            why = STOPPED_IDLE  # shared: it times itself
            log.info("serve worker (pid %s) stopped when idle", process.pid)
        self._fail_pending(why or f"the serve worker stopped unexpectedly (exit code {code})", sent)

    def _fail_pending(self, message: str, sent: set[str]) -> None:
        """Fail the asks this worker was given; one still waiting to be sent goes to the next worker."""
        for request_id, queue in list(self._pending.items()):
            if request_id not in sent:
                continue
            queue.put_nowait(
                Failed(
                    id=request_id,
                    kind="internal",
                    message=message,
                    hint=f"ask again to restart it; its log is {self.log_path}",
                )
            )

    # --- idle shutdown

    def _arm_idle_timer(self) -> None:
        if self._pending or not self.running or self.socket_dir is not None:  # shared: it times itself
            return
        self._cancel_idle_timer()
        loop = asyncio.get_running_loop()
        self._idle_timer = loop.call_later(self.config.idle_timeout_s, self._start_idle_stop)

    def _start_idle_stop(self) -> None:
        # Held in an attribute: the event loop keeps only weak references to tasks.
        self._idle_task = asyncio.get_running_loop().create_task(self._idle_stop())

    async def _idle_stop(self) -> None:
        if not self._pending:
            log.info("serve worker idle for %.0f s: stopping it", self.config.idle_timeout_s)
            await self.close()

    def _cancel_idle_timer(self) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
