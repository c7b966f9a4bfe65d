"""What the fake Hub holds and records: its repos, the faults and holds a test sets, the requests it
answered; and how the Hub tells LFS files and git blob ids."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass, field
from typing import Any

import yaml

LFS_SUFFIXES = (".safetensors", ".bin", ".png", ".pt", ".gguf")


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


def is_lfs(path: str, size: int) -> bool:
    return path.endswith(LFS_SUFFIXES) or size > 10 * 1024 * 1024


def git_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
