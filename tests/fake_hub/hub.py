"""The FakeHub itself: its state, the controls a test uses (faults, holds, repos it adds, the requests it
reads back), and the loopback server that answers huggingface_hub with the routes of the other modules."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import ThreadingHTTPServer

from tests.fake_hub.download_routes import DOWNLOAD_ROUTES, DownloadRoutes
from tests.fake_hub.models import FakeRepo, Fault, Hold, Request
from tests.fake_hub.repo_routes import REPO_ROUTES, RepoRoutes
from tests.fake_hub.upload_routes import UPLOAD_ROUTES, UploadRoutes


class _Handler(RepoRoutes, UploadRoutes, DownloadRoutes):
    routes = (*REPO_ROUTES, *UPLOAD_ROUTES, *DOWNLOAD_ROUTES)


class FakeHub:
    def __init__(
        self,
        tokens: dict[str, str],
        read_only: frozenset[str] = frozenset(),
        orgs: dict[str, set[str]] | None = None,
    ) -> None:
        self.tokens = dict(tokens)  # token -> user name
        self.read_only = read_only  # tokens that may read but not write
        self.orgs = {name: set(members) for name, members in (orgs or {}).items()}  # org -> its members
        self.repos: dict[str, FakeRepo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.holds: list[Hold] = []
        self.lock = threading.RLock()  # replies log under it, also from inside locked sections
        self._server: ThreadingHTTPServer | None = None

    # --- control

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True, name="fake-hub"
        ).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(
        self,
        method: str,
        path: str,
        status: int,
        times: int | None = 1,
        headers: dict[str, str] | None = None,
    ) -> None:
        """Answer `status` to the next `times` requests (None: all) whose path matches the regex `path`."""
        with self.lock:
            self.faults.append(Fault(method, re.compile(path), status, times, headers or {}))

    def hold(self, method: str, path: str) -> Hold:
        """Keep requests whose path matches the regex `path` waiting (before they are handled) until the
        returned Hold is released: a test can then act while, say, a create is in flight."""
        hold = Hold(method, re.compile(path))
        with self.lock:
            self.holds.append(hold)
        return hold

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> FakeRepo:
        """A repo someone else published (e.g. a base model with its card)."""
        repo = FakeRepo(repo_id, repo_id.split("/")[0], private)
        self.repos[repo_id] = repo
        self._commit(repo, files, set())
        return repo

    def calls(self, method: str, pattern: str) -> list[Request]:
        return [r for r in self.requests if r.method == method and re.search(pattern, r.path)]

    def writes(self) -> list[Request]:
        """Every request that asks the Hub to change something (create, settings, uploads, commits)."""
        reads = ("/api/validate-yaml",)  # a POST that only checks a card's YAML
        return [r for r in self.requests if r.method in ("POST", "PUT", "DELETE") and r.path not in reads]

    def member_of(self, user: str | None, namespace: str) -> bool:
        """`user` may see the private repos of `namespace` and write there: it is theirs or their org's."""
        return user is not None and (user == namespace or user in self.orgs.get(namespace, set()))

    # --- state changes (called with the lock held)

    def _commit(self, repo: FakeRepo, files: dict[str, bytes], lfs_paths: set[str]) -> str:
        repo.files.update(files)
        repo.lfs_paths = (repo.lfs_paths - set(files)) | lfs_paths
        digest = hashlib.sha1(repo.sha.encode() + json.dumps(sorted(files)).encode())
        digest.update(str(len(repo.commits)).encode())
        repo.commits.append(digest.hexdigest())
        return repo.sha
