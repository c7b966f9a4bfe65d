"""Download routes: model info (with `private` and the card data), tree, and HEAD/GET resolve, at main
or at a commit."""

from __future__ import annotations

import hashlib
from typing import Any

from tests.fake_hub.models import git_sha
from tests.fake_hub.plumbing import REPO, HubHandler, Route


class DownloadRoutes(HubHandler):
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
            entry: dict[str, Any] = {"type": "file", "path": name, "size": len(data), "oid": git_sha(data)}
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
        etag = hashlib.sha256(data).hexdigest() if path in found.lfs_paths else git_sha(data)
        self._reply(200, raw=data, headers={"X-Repo-Commit": found.sha, "ETag": f'"{etag}"'})


DOWNLOAD_ROUTES: list[Route] = [
    ("GET", rf"/api/models/{REPO}(?:/revision/(?P<rev>[^/]+))?", DownloadRoutes.model_info),
    ("GET", rf"/api/models/{REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.+))?", DownloadRoutes.tree),
    ("GET|HEAD", rf"/{REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", DownloadRoutes.resolve),
]
