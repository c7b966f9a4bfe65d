"""A loopback fake of the Hugging Face Hub's upload and download routes that the real huggingface_hub
client talks to (HfApi(endpoint=hub.url) or HF_ENDPOINT; HF_HUB_DISABLE_XET=1 so uploads take LFS).

    hub = FakeHub({"hf_alice_write_token": "alice"}, orgs={"acme": {"alice"}}).start()
    hub.fail("POST", r"/commit/", status=429, times=1)     # the next commit is rate limited once
    hub.repos["alice/x"].files["adapter_model.safetensors"]  # what was committed
    hub.requests                                             # every request, in the order answered

Routes (as huggingface_hub 2.4 calls them): whoami-v2, repos/create (409 with the repo's url when it
exists), validate-yaml, preupload, the LFS batch/upload/verify, commit (NDJSON), model info (with
`private`), settings (PUT: visibility), tree, and HEAD/GET resolve. A user writes to their own namespace
and to the organisations they belong to. A thread-per-request http.server, so blocking client calls work
from sync code and from worker threads alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".png", ".pt", ".gguf")
BAD_TOKEN = "Invalid credentials in Authorization header"  # the message huggingface_hub keys 401s on
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"


@dataclass
class FakeRepo:
    repo_id: str
    owner: str
    private: bool
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_paths: set[str] = field(default_factory=set)
    commits: list[str] = field(default_factory=list)

    @property
    def sha(self) -> str:
        return self.commits[-1] if self.commits else "0" * 40

    def card_data(self) -> dict[str, Any] | None:
        text = self.files.get("README.md", b"").decode()
        if not text.startswith("---\n"):
            return None
        return yaml.safe_load(text.split("---\n", 2)[1]) or {}


@dataclass
class Fault:
    method: str
    pattern: re.Pattern[str]
    status: int
    remaining: int | None  # None: every time
    headers: dict[str, str]


@dataclass
class Hold:
    """Requests matching it wait, once they `arrived`, until the test sets `release`."""

    method: str
    pattern: re.Pattern[str]
    arrived: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    status: int
    user: str | None


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


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
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
            for method, pattern, handler in ROUTES:
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

    # --- routes

    def whoami(self, body: bytes) -> None:
        if self._user is None:
            self._reply(401, {"error": "no token"}, headers={"X-Error-Message": BAD_TOKEN})
            return
        role = "read" if self._token in self.fake.read_only else "write"
        self._reply(200, {"type": "user", "name": self._user, "auth": {"accessToken": {"role": role}}})

    def create_repo(self, body: bytes) -> None:
        request = json.loads(body)
        namespace = request.get("organization") or self._user
        if not self.fake.member_of(self._user, namespace) or self._token in self.fake.read_only:
            message = f"You don't have the rights to create a model under the namespace {namespace}"
            self._reply(403, {"error": message}, headers={"X-Error-Message": message})
            return
        repo_id = f"{namespace}/{request['name']}"
        url = f"{self.fake.url}/{repo_id}"
        with self.fake.lock:
            if repo_id in self.fake.repos:
                self._reply(409, {"error": "You already created this model repo", "url": url})
                return
            private = request.get("visibility", "public") == "private" or bool(request.get("private"))
            self.fake.repos[repo_id] = FakeRepo(repo_id, namespace, private)
        self._reply(200, {"url": url, "name": repo_id})

    def settings(self, body: bytes, repo: str) -> None:
        """PUT /api/models/{repo}/settings as update_repo_settings sends it: {"visibility": ...}."""
        if (found := self._repo(repo, write=True)) is None:
            return
        visibility = json.loads(body or b"{}").get("visibility")
        if visibility not in (None, "public", "private"):
            self._reply(400, {"error": f"invalid visibility {visibility!r}"})
            return
        with self.fake.lock:
            if visibility is not None:
                found.private = visibility == "private"
        self._reply(200, {})

    def validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        try:
            if content.startswith("---\n"):
                yaml.safe_load(content.split("---\n", 2)[1])
        except yaml.YAMLError as error:
            self._reply(400, {"errors": [{"message": str(error)}]})
            return
        self._reply(200, {"errors": [], "warnings": []})

    def preupload(self, body: bytes, repo: str, rev: str) -> None:
        if (found := self._repo(repo, write=True)) is None:
            return
        files = [
            {
                "path": item["path"],
                "uploadMode": "lfs" if _is_lfs(item["path"], item["size"]) else "regular",
                "shouldIgnore": False,
            }
            for item in json.loads(body)["files"]
        ]
        self._reply(200, {"files": files, "commitOid": found.sha})

    def lfs_batch(self, body: bytes, repo: str) -> None:
        if self._repo(repo, write=True) is None:
            return
        objects = []
        for item in json.loads(body)["objects"]:
            oid, size = item["oid"], item["size"]
            entry: dict[str, Any] = {"oid": oid, "size": size}
            if oid not in self.fake.lfs_objects:
                entry["authenticated"] = True
                entry["actions"] = {
                    "upload": {"href": f"{self.fake.url}/lfs/{oid}"},
                    "verify": {"href": f"{self.fake.url}/lfs/{oid}/verify"},
                }
            objects.append(entry)
        self._reply(200, {"transfer": "basic", "objects": objects})

    def lfs_upload(self, body: bytes, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            self._reply(400, {"error": "sha256 mismatch"})
            return
        with self.fake.lock:
            self.fake.lfs_objects[oid] = body
        self._reply(200, {})

    def lfs_verify(self, body: bytes, oid: str) -> None:
        stored = self.fake.lfs_objects.get(oid)
        ok = stored is not None and len(stored) == json.loads(body)["size"]
        self._reply(200 if ok else 404, {} if ok else {"error": "object not found"})

    def commit(self, body: bytes, repo: str, rev: str) -> None:
        if (found := self._repo(repo, write=True)) is None:
            return
        files: dict[str, bytes] = {}
        lfs_paths: set[str] = set()
        for line in body.splitlines():
            item = json.loads(line)
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.fake.lfs_objects:
                    self._reply(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                    return
                files[value["path"]] = self.fake.lfs_objects[value["oid"]]
                lfs_paths.add(value["path"])
        with self.fake.lock:
            sha = self.fake._commit(found, files, lfs_paths)
        url = f"{self.fake.url}/{repo}/commit/{sha}"
        self._reply(200, {"commitUrl": url, "commitOid": sha, "pullRequestUrl": None, "success": True})

    def model_info(self, body: bytes, repo: str, rev: str | None = None) -> None:
        if (found := self._repo(repo)) is None or not self._revision_ok(found, rev):
            return
        siblings = [{"rfilename": path} for path in sorted(found.files)]
        info = {"id": repo, "sha": found.sha, "private": found.private, "siblings": siblings, "tags": []}
        if (card := found.card_data()) is not None:
            info["cardData"] = card
        self._reply(200, info)

    def tree(self, body: bytes, repo: str, rev: str, path: str | None = None) -> None:
        if (found := self._repo(repo)) is None or not self._revision_ok(found, rev):
            return
        entries = []
        for name, data in sorted(found.files.items()):
            if path and not name.startswith(path.rstrip("/") + "/"):
                continue
            entry: dict[str, Any] = {"type": "file", "path": name, "size": len(data), "oid": _git_sha(data)}
            if name in found.lfs_paths:
                entry["lfs"] = {
                    "oid": hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                    "pointerSize": 134,
                }
            entries.append(entry)
        self._reply(200, entries)

    def resolve(self, body: bytes, repo: str, rev: str, path: str) -> None:
        if (found := self._repo(repo)) is None or not self._revision_ok(found, rev):
            return
        data = found.files.get(path)
        if data is None:
            headers = {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": found.sha}
            self._reply(404, {"error": "Entry not found"}, headers=headers)
            return
        etag = hashlib.sha256(data).hexdigest() if path in found.lfs_paths else _git_sha(data)
        self._reply(200, raw=data, headers={"X-Repo-Commit": found.sha, "ETag": f'"{etag}"'})

    def _revision_ok(self, repo: FakeRepo, rev: str | None) -> bool:
        if rev is None or rev in ("main", repo.sha):
            return True
        self._reply(404, {"error": "Revision not found"}, headers={"X-Error-Code": "RevisionNotFound"})
        return False


ROUTES = [
    ("GET", r"/api/whoami-v2", _Handler.whoami),
    ("POST", r"/api/repos/create", _Handler.create_repo),
    ("POST", r"/api/validate-yaml", _Handler.validate_yaml),
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", _Handler.preupload),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", _Handler.lfs_batch),
    ("PUT", r"/lfs/(?P<oid>[0-9a-f]{64})", _Handler.lfs_upload),
    ("POST", r"/lfs/(?P<oid>[0-9a-f]{64})/verify", _Handler.lfs_verify),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", _Handler.commit),
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", _Handler.model_info),
    ("PUT", rf"/api/models/{REPO}/settings", _Handler.settings),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", _Handler.tree),
    ("GET|HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", _Handler.resolve),
]


def _is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size > 10 * 1024 * 1024


def _git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
