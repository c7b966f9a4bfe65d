"""Account and repo routes: whoami-v2, repos/create (409 with the repo's url when it exists), settings
(PUT: visibility) and validate-yaml. A user writes to their own namespace and to their organisations."""

from __future__ import annotations

import json

import yaml

from tests.fake_hub.models import FakeRepo
from tests.fake_hub.plumbing import BAD_TOKEN, REPO, HubHandler, Route


class RepoRoutes(HubHandler):
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


REPO_ROUTES: list[Route] = [
    ("GET", r"/api/whoami-v2", RepoRoutes.whoami),
    ("POST", r"/api/repos/create", RepoRoutes.create_repo),
    ("POST", r"/api/validate-yaml", RepoRoutes.validate_yaml),
    ("PUT", rf"/api/models/{REPO}/settings", RepoRoutes.settings),
]
