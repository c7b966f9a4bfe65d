"""The request handler's plumbing: reading a request (chunked or not), faults and holds, the token's
user, dispatch to the route table, replies (each recorded), and the visibility and write checks of a repo."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

from tests.fake_hub.models import FakeRepo, Fault, Request

if TYPE_CHECKING:
    from tests.fake_hub.hub import FakeHub

BAD_TOKEN = "Invalid credentials in Authorization header"  # the message huggingface_hub keys 401s on
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
# (methods joined by "|", the path's regex, the handler method): fullmatched in order.
Route = tuple[str, str, Callable[..., None]]


class HubHandler(BaseHTTPRequestHandler):
    fake: FakeHub
    routes: ClassVar[tuple[Route, ...]] = ()  # the full table, set by the FakeHub's handler
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures anyway
        pass

    # --- plumbing

    def _handle(self) -> None:
        body = self._read_body()
        path = unquote(self.path.split("?", 1)[0])
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip() or None
        user = self.fake.tokens.get(token) if token else None
        self._user, self._token = user, token
        with self.fake.lock:
            holds = [h for h in self.fake.holds if h.method == self.command and h.pattern.search(path)]
        for hold in holds:
            hold.arrived.set()
            hold.release.wait(timeout=30)
        with self.fake.lock:
            fault = self._fault(path)
        if fault is not None:
            self._reply(fault.status, {"error": f"injected {fault.status}"}, headers=fault.headers)
        elif token is not None and user is None:
            # The body names the presented token, as a careless server might: it must never reach users.
            self._reply(401, {"error": f"bad token {token}"}, headers={"X-Error-Message": BAD_TOKEN})
        else:
            for method, pattern, handler in self.routes:
                match = re.fullmatch(pattern, path)
                if match and self.command in method.split("|"):
                    handler(self, body, **match.groupdict())
                    break
            else:
                self._reply(404, {"error": f"no route {self.command} {path}"})

    do_GET = do_HEAD = do_POST = do_PUT = _handle

    def _fault(self, path: str) -> Fault | None:
        for fault in self.fake.faults:
            if fault.method == self.command and fault.pattern.search(path) and fault.remaining != 0:
                if fault.remaining is not None:
                    fault.remaining -= 1
                return fault
        return None

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _reply(
        self,
        status: int,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header(
            "Content-Type", "application/octet-stream" if raw is not None else "application/json"
        )
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        with self.fake.lock:
            self.fake.requests.append(Request(self.command, self.path, status, self._user))

    def _repo(self, repo_id: str, *, write: bool = False) -> FakeRepo | None:
        """The repo if this caller may see it (write: may commit to it); else the reply is sent."""
        repo = self.fake.repos.get(repo_id)
        if repo is None or (repo.private and not self.fake.member_of(self._user, repo.owner)):
            self._reply(404, {"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
            return None
        if write and (not self.fake.member_of(self._user, repo.owner) or self._token in self.fake.read_only):
            self._reply(403, {"error": "no write access"}, headers={"X-Error-Message": "no write access"})
            return None
        return repo

    def _revision_ok(self, repo: FakeRepo, rev: str | None) -> bool:
        if rev is None or rev in ("main", repo.sha):
            return True
        self._reply(404, {"error": "Revision not found"}, headers={"X-Error-Code": "RevisionNotFound"})
        return False
