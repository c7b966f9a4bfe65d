"""Upload routes: preupload (which files go to LFS), the LFS batch/upload/verify, and the NDJSON commit."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from tests.fake_hub.models import is_lfs
from tests.fake_hub.plumbing import REPO, HubHandler, Route


class UploadRoutes(HubHandler):
    def preupload(self, body: bytes, repo: str, rev: str) -> None:
        if (found := self._repo(repo, write=True)) is None:
            return
        files = [
            {
                "path": item["path"],
                "uploadMode": "lfs" if is_lfs(item["path"], item["size"]) else "regular",
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


UPLOAD_ROUTES: list[Route] = [
    ("POST", rf"/api/models/{REPO}/preupload/(?P<rev>[^/]+)", UploadRoutes.preupload),
    ("POST", rf"/{REPO}\.git/info/lfs/objects/batch", UploadRoutes.lfs_batch),
    ("PUT", r"/lfs/(?P<oid>[0-9a-f]{64})", UploadRoutes.lfs_upload),
    ("POST", r"/lfs/(?P<oid>[0-9a-f]{64})/verify", UploadRoutes.lfs_verify),
    ("POST", rf"/api/models/{REPO}/commit/(?P<rev>[^/]+)", UploadRoutes.commit),
]
