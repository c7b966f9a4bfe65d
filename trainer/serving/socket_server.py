"""The serve worker's Unix socket: several local clients (`qlora-bot ask`, the bot) share one loaded worker.

Each connection speaks the same JSON-lines serve protocol as stdin/stdout. Its requests join the one
request queue under ids namespaced by connection (two clients may both send id "a"), and their events go
back to that connection under the client's own id. The socket is owner-only (mode 0600 in a 0700 folder,
and the peer's uid is checked); there is no TCP. With an idle timeout the worker stops once no request and
no connection has been seen for that long, removing its socket first so no client connects to a dying one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from protocol.serve import (
    Cancel,
    Failed,
    Finished,
    Generate,
    Ready,
    ServeEvent,
    ServeProtocolError,
    decode_request,
    encode,
)
from trainer.serving.queue import Ask, RequestQueue

log = logging.getLogger("trainer.serve")
ACCEPT_SLICE_S = 0.2  # how often the accept and idle loops look at the stop flag


class Connection:
    """One socket client: its writes are serialised (the generation loop and its reader both answer)."""

    def __init__(self, number: int, sock: socket.socket) -> None:
        self.number = number
        self.sock = sock
        self._lock = threading.Lock()
        self._broken = False

    def send(self, event: ServeEvent) -> None:
        data = (encode(event) + "\n").encode()
        with self._lock:
            if self._broken:
                return
            try:
                self.sock.sendall(data)
            except OSError:  # the client went away: its reader sees EOF and cancels its requests
                self._broken = True

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@dataclass
class _Owner:
    connection: Connection | None  # None: the parent's stdin
    client_id: str
    rows_left: int  # Finished events still to come (two with compare)


@dataclass
class Router:
    """Every event goes through here: a request's events to whoever sent it, the rest (Stats) to stdout.
    It also counts the requests in flight, which the idle stop needs."""

    stdout: Callable[[ServeEvent], None]
    last_activity: float = field(default_factory=time.monotonic)
    _owners: dict[str, _Owner] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _requests: int = 0  # socket requests registered so far: their queue ids

    def register(self, request: Generate, connection: Connection | None) -> Generate | None:
        """The request as the queue sees it (its id namespaced for a socket client); None when that id is
        already in flight."""
        with self._lock:
            if connection is None:
                internal = request.id
                if internal in self._owners:
                    return None
            else:
                if self._internal_id(connection, request.id) is not None:
                    return None
                # Unique per request, not only per client: an id a client reuses right after its Finished
                # may still sit in the queue's running batch for a moment.
                self._requests += 1
                internal = f"s{connection.number}.{self._requests}/{request.id}"
            self._owners[internal] = _Owner(connection, request.id, 2 if request.compare else 1)
            self.last_activity = time.monotonic()
        return dataclasses.replace(request, id=internal)

    def internal_id(self, connection: Connection, client_id: str) -> str | None:
        """The queue's id of a socket client's request in flight (what its Cancel names)."""
        with self._lock:
            return self._internal_id(connection, client_id)

    def _internal_id(self, connection: Connection, client_id: str) -> str | None:
        for internal, owner in self._owners.items():
            if owner.connection is connection and owner.client_id == client_id:
                return internal
        return None

    def forget(self, internal: str) -> None:
        with self._lock:
            self._owners.pop(internal, None)

    def in_flight(self, connection: Connection | None = None) -> list[str]:
        with self._lock:
            if connection is None:
                return list(self._owners)
            return [key for key, owner in self._owners.items() if owner.connection is connection]

    def __call__(self, event: ServeEvent) -> None:
        internal = getattr(event, "id", None)
        with self._lock:
            owner = self._owners.get(internal) if internal is not None else None
            if owner is not None and isinstance(event, Failed | Finished):
                owner.rows_left = 0 if isinstance(event, Failed) else owner.rows_left - 1
                if owner.rows_left <= 0:
                    del self._owners[internal]
                self.last_activity = time.monotonic()
        if owner is None or owner.connection is None:
            self.stdout(event)
        else:
            owner.connection.send(dataclasses.replace(event, id=owner.client_id))


class SocketServer:
    def __init__(
        self, path: Path, queue: RequestQueue, router: Router, *, idle_timeout_s: float | None = None
    ) -> None:
        self.path = path
        self.queue = queue
        self.router = router
        self.idle_timeout_s = idle_timeout_s
        self._listener: socket.socket | None = None
        self._inode: int | None = None
        self._connections: set[Connection] = set()
        self._lock = threading.Lock()
        self._numbers = 0
        self.stopped_idle = False  # it stopped itself: what an ask that comes too late is told

    def start(self) -> bool:
        """Listen; False (and the worker serves its stdin only) when another live worker holds the path."""
        folder = self.path.parent
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)  # only the owner may reach the socket, whatever the umask made
        listener = bind_owner_only(self.path)
        if listener is None:
            log.warning("another serve worker listens on %s: this one serves its parent only", self.path)
            return False
        self._listener = listener
        self._inode = os.stat(self.path).st_ino
        threading.Thread(target=self._accept, name="socket-accept", daemon=True).start()
        self.watch_idle()
        log.info("listening on %s", self.path)
        return True

    def watch_idle(self) -> None:
        """With an idle timeout, stop the worker once nothing is in flight, no client is connected and the
        timeout has passed since the last request ended (also for a worker that serves its parent only)."""
        if self.idle_timeout_s is not None:
            threading.Thread(target=self._watch_idle, name="socket-idle", daemon=True).start()

    def close(self) -> None:
        """Remove the socket (only if it is still ours) and hang up on every client."""
        self.close_listener()
        with self._lock:
            connections, self._connections = self._connections, set()
        for connection in connections:
            connection.close()

    def _accept(self) -> None:
        while not self.queue.stopping.is_set() and (listener := self._listener) is not None:
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break  # closed
            if peer_uid(sock) != os.getuid():  # the folder's mode forbids it; belt and braces
                log.warning("refused a connection from another user")
                sock.close()
                continue
            with self._lock:
                self._numbers += 1
                connection = Connection(self._numbers, sock)
                self._connections.add(connection)
            connection.send(Ready(pid=os.getpid()))  # the hello: which worker answers
            name = f"socket-{connection.number}"
            threading.Thread(target=self._serve, args=(connection,), name=name, daemon=True).start()

    def _serve(self, connection: Connection) -> None:
        try:
            for line in _socket_lines(connection.sock):
                self._handle(connection, line)
        finally:
            for internal in self.router.in_flight(connection):  # the client is gone: stop its work
                waiting = self.queue.cancel(internal, "cancelled: the client disconnected")
                if waiting is not None:  # never started: nothing more will be said about it
                    waiting.closed = True
                    self.router.forget(internal)
                # A running one ends at its next step; its last event, sent to nobody, takes it off the books.
            with self._lock:
                self._connections.discard(connection)
            self.router.last_activity = time.monotonic()
            connection.close()

    def _handle(self, connection: Connection, line: bytes) -> None:
        try:
            request = decode_request(line)
        except ServeProtocolError as error:
            log.error("ignored a socket line that is not serve protocol: %s", error)
            return
        if isinstance(request, Generate):
            registered = self.router.register(request, connection)
            if registered is not None and not self.queue.submit(Ask(registered)):
                self.router.forget(registered.id)
                registered = None
            if registered is None:
                connection.send(
                    Failed(id=request.id, kind="user_error", message="a request with this id is in flight")
                )
        elif isinstance(request, Cancel):
            internal = self.router.internal_id(connection, request.id)
            waiting = self.queue.cancel(internal, "cancelled") if internal is not None else None
            if waiting is not None:
                waiting.closed = True
                self.router(Failed(id=waiting.id, kind="cancelled", message="cancelled before it started"))
        else:
            # Other clients share this worker: one of them cannot stop it. It stops when idle.
            log.info("ignored a shutdown request from socket client %s", connection.number)

    def _watch_idle(self) -> None:
        assert self.idle_timeout_s is not None
        while not self.queue.stopping.wait(ACCEPT_SLICE_S):
            with self._lock:
                busy = bool(self._connections) or bool(self.router.in_flight())
                idle_s = time.monotonic() - self.router.last_activity
                if busy or idle_s < self.idle_timeout_s:
                    continue
                # Gone from the folder before the worker stops: the next client starts a fresh one.
                log.info("idle for %.0f s with no client: stopping", idle_s)
                self.stopped_idle = True
                self.close_listener()
            self.queue.request_stop()
            return

    def close_listener(self) -> None:
        """Remove the socket file, only if it is still ours (a newer worker may have replaced it)."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)
            listener.close()


def bind_owner_only(path: Path) -> socket.socket | None:
    """A listening socket at `path`, mode 0600; a stale file (no one answers) is replaced. None when a live
    worker answers there."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # never, even for an instant, a socket others may connect to
    try:
        try:
            listener.bind(str(path))
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            if _answers(path):
                listener.close()
                return None
            os.unlink(path)  # a dead worker's socket
            listener.bind(str(path))
    finally:
        os.umask(old_umask)
    os.chmod(path, 0o600)
    listener.listen(16)
    listener.settimeout(ACCEPT_SLICE_S)
    return listener


def _answers(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def peer_uid(sock: socket.socket) -> int:
    credentials = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", credentials)[1]


def _socket_lines(sock: socket.socket):
    pending = b""
    while True:
        try:
            chunk = sock.recv(1 << 16)
        except OSError:
            break
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending
