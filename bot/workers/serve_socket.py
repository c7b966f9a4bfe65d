"""A serve worker shared through its Unix socket: connect to the one that runs, or start one that outlives us.

`qlora-bot ask` uses this instead of a worker of its own, so successive asks (and the bot's /ask) share one
loaded base model. The socket lives at DATA_DIR/serve/<key>.sock; the key names what makes two workers
interchangeable (interpreter, settings, device, Hub access), so an ask never lands on a worker started for
other limits or without the Hub it needs. "Connect or start" runs under an flock on <key>.lock, so two asks
at once start one worker. A worker this client starts runs detached (its own session, no pipes to us, its
log in the logs folder) and stops itself after serve.idle_timeout_s with no request and no client.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import logging
import os
import socket
import stat
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

from bot.config import ServeConfig
from bot.workers.environment import uses_hub, worker_environment
from bot.workers.serve_worker import (
    MAX_LINE_BYTES,
    SILENCE_GRACE_S,
    START_TIMEOUT_S,
    Waiting,
    could_not_start,
    limit_flags,
)
from protocol.serve import (
    Cancel,
    Failed,
    Finished,
    Generate,
    Ready,
    ServeEvent,
    ServeProtocolError,
    decode_event,
    encode,
)

log = logging.getLogger(__name__)
HELLO_TIMEOUT_S = 10.0  # a live worker sends its Ready hello at once; a socket that says nothing is dead
MAX_SOCKET_PATH = 107  # sun_path holds 108 bytes with the terminating NUL


def socket_key(config: ServeConfig, *, python: str, module: str, device: str | None, hub: bool) -> str:
    """What makes two serve workers interchangeable, hashed (no paths or names show in the file name)."""
    what = {
        "python": python or sys.executable,
        "module": module,
        "limits": limit_flags(config),  # what the worker is started with, so the two never disagree
        "device": device,
        "hub": hub,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def socket_path(socket_dir: Path, key: str) -> Path:
    path = socket_dir.absolute() / f"{key}.sock"
    if len(os.fsencode(str(path))) > MAX_SOCKET_PATH:
        raise OSError(
            f"the serve socket path {path} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket allows; "
            "use a shorter data directory (paths.data_dir or QLORA_BOT_HOME)"
        )
    return path


def prepare_socket_dir(socket_dir: Path) -> None:
    """The folder of the sockets: ours and closed to everyone else, or we refuse to use it."""
    socket_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(socket_dir, 0o700)
    info = os.stat(socket_dir)
    if info.st_uid != os.getuid():
        raise OSError(f"{socket_dir} belongs to another user: serve sockets must live in a folder of yours")


class SharedServeClient:
    """generate(), cancel() and close() as ServeClient gives them, on a shared worker's socket."""

    def __init__(
        self,
        config: ServeConfig,
        socket_dir: Path,
        log_dir: Path,
        *,
        environ: Mapping[str, str] | None = None,
        python: str = "",
        module: str = "trainer.serving.worker",
        cuda_visible_devices: str | None = None,
        work_dir: Path | None = None,
        cache_dir: Path | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.config = config
        self.socket_dir = socket_dir
        self.log_dir = log_dir
        self.environ = dict(os.environ if environ is None else environ)
        self.python = python or sys.executable
        self.module = module
        self.cuda_visible_devices = cuda_visible_devices
        self.work_dir = work_dir if work_dir is not None else socket_dir
        self.cache_dir = cache_dir if cache_dir is not None else self.work_dir / "cache"
        self.start_timeout_s = start_timeout_s
        self._connections: dict[str, WorkerConnection] = {}
        self.worker_pid: int | None = None  # the worker that answered the last ask
        self.started = False  # whether this client started that worker (False: it reused one)

    def log_path(self, key: str) -> Path:
        return self.log_dir / f"serve-{key}.log"

    async def generate(self, request: Generate) -> AsyncIterator[ServeEvent | Waiting]:
        """The events of one request, ending after its last Finished (two with compare) or a Failed."""
        hub = uses_hub(request.base_model)  # a Hub base model needs a worker with the Hub (and HF_TOKEN)
        key = socket_key(
            self.config, python=self.python, module=self.module, device=self.cuda_visible_devices, hub=hub
        )
        try:
            connection = await self._connection(key, hub)
        except (ConnectionError, TimeoutError, OSError) as error:
            yield could_not_start(request.id, error, self.log_path(key))
            return
        self.worker_pid = connection.pid
        async for event in connection.generate(request):
            yield event

    async def cancel(self, request_id: str) -> None:
        for connection in self._connections.values():
            await connection.cancel(request_id)

    async def close(self) -> None:
        """Hang up; the worker goes on serving others and stops when idle."""
        connections, self._connections = self._connections, {}
        for connection in connections.values():
            await connection.close()

    async def _connection(self, key: str, hub: bool) -> WorkerConnection:
        known = self._connections.get(key)
        if known is not None and known.alive:
            return known
        prepare_socket_dir(self.socket_dir)
        path = socket_path(self.socket_dir, key)
        connection = await connect(path, self.log_path(key))  # the common case needs no lock
        if connection is None:
            async with _locked(self.socket_dir / f"{key}.lock"):
                connection = await connect(path, self.log_path(key))
                if connection is None:  # nothing answers: whatever file lies there is a dead worker's
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    connection = await self._start(key, path, hub)
                    self.started = True
        self._connections[key] = connection
        return connection

    async def _start(self, key: str, path: Path, hub: bool) -> WorkerConnection:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        env = worker_environment(
            self.environ,
            hub_token=hub,
            cuda_visible_devices=self.cuda_visible_devices,
            cache_root=self.cache_dir,
        )
        log_path = self.log_path(key)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        config = self.config
        with open(log_path, "ab") as log_file:
            # Detached: its own session (no signal of our terminal reaches it), no pipe to this process
            # (it outlives it), stderr to its own log. Exec, never a shell.
            process = subprocess.Popen(
                [
                    self.python, "-m", self.module,
                    *limit_flags(config),
                    "--socket", str(path),
                    "--idle-timeout-s", str(config.idle_timeout_s),
                    "--detached",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
                env=env,
                cwd=self.work_dir,
                start_new_session=True,
            )  # fmt: skip
        log.info("started a shared serve worker (pid %s, Hub %s)", process.pid, "on" if hub else "off")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        while loop.time() < deadline:
            code = process.poll()
            connection = await connect(path, log_path)  # it exits 0 when another already serves the path
            if connection is None and code is not None:
                raise ConnectionError(f"the serve worker exited with code {code} while starting")
            if connection is not None:
                return connection
            await asyncio.sleep(0.2)
        process.kill()
        raise TimeoutError(f"the serve worker did not listen within {self.start_timeout_s:.0f} s")


@contextlib.asynccontextmanager
async def _locked(path: Path) -> AsyncIterator[None]:
    """An exclusive flock on `path` for the block, polled so the event loop never blocks. The kernel
    releases it when the file closes, a crash of this process included."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)


async def connect(path: Path, log_path: Path) -> WorkerConnection | None:
    """A connection to the worker at `path` once it said hello; None when nothing answers there."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
        raise OSError(f"{path} is not a serve socket of yours: remove it")
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=MAX_LINE_BYTES)
    except (ConnectionRefusedError, FileNotFoundError):
        return None
    sock = writer.get_extra_info("socket")
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    if struct.unpack("3i", credentials)[1] != os.getuid():
        writer.close()
        raise OSError(f"the process listening on {path} runs as another user")
    try:
        hello = decode_event(await asyncio.wait_for(reader.readline(), HELLO_TIMEOUT_S))
    except (TimeoutError, ServeProtocolError, ValueError, OSError):
        hello = None
    if not isinstance(hello, Ready):  # closing (idle stop) or not a serve worker
        writer.close()
        return None
    return WorkerConnection(reader, writer, hello.pid, log_path)


class WorkerConnection:
    """One connection to a worker: a reader task routes its events to each ask's queue by id."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, pid: int, log_path: Path
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.pid = pid
        self.log_path = log_path
        self._pending: dict[str, asyncio.Queue] = {}
        self._closed = False
        self._task = asyncio.create_task(self._read(), name=f"serve-socket-{pid}")

    @property
    def alive(self) -> bool:
        return not self._closed

    async def generate(self, request: Generate) -> AsyncIterator[ServeEvent]:
        queue: asyncio.Queue = asyncio.Queue()
        self._pending[request.id] = queue
        expected = 2 if request.compare else 1
        ended = False
        try:
            if self._closed:
                yield self._gone(request.id)
                return
            await self._send(encode(request))
            while not ended:
                try:
                    # The worker fails an ask past its timeout itself; silence beyond it means it is stuck.
                    event = await asyncio.wait_for(queue.get(), request.timeout_s + SILENCE_GRACE_S)
                except TimeoutError:
                    event = Failed(
                        id=request.id,
                        kind="internal",
                        message=f"the serve worker (pid {self.pid}) stopped answering",
                        hint=f"its log is {self.log_path}",
                    )
                if isinstance(event, Finished):
                    expected -= 1
                    ended = expected == 0
                ended = ended or isinstance(event, Failed)
                yield event
        finally:
            self._pending.pop(request.id, None)
            if not ended and not self._closed:  # the asker went away: stop spending the GPU on it
                with contextlib.suppress(Exception):
                    await self._send(encode(Cancel(id=request.id)))

    async def cancel(self, request_id: str) -> None:
        if not self._closed:
            await self._send(encode(Cancel(id=request_id)))

    async def close(self) -> None:
        self._closed = True
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _send(self, line: str) -> None:
        self.writer.write(line.encode() + b"\n")
        await self.writer.drain()

    async def _read(self) -> None:
        try:
            while line := await self.reader.readline():
                try:
                    event = decode_event(line)
                except ServeProtocolError as error:
                    log.error("serve worker broke the protocol: %s", error)
                    break
                queue = self._pending.get(getattr(event, "id", ""))
                if queue is not None:
                    queue.put_nowait(event)
        except (ValueError, OSError, asyncio.LimitOverrunError):
            log.error("lost the serve worker's socket (pid %s)", self.pid)
        self._closed = True
        for request_id, queue in list(self._pending.items()):
            queue.put_nowait(self._gone(request_id))

    def _gone(self, request_id: str) -> Failed:
        return Failed(
            id=request_id,
            kind="internal",
            message=f"the serve worker (pid {self.pid}) stopped unexpectedly",
            hint=f"ask again to restart it; its log is {self.log_path}",
        )
