"""The `fake_hub` fixture (a started FakeHub with the real huggingface_hub pointed at it) and helpers for
the Hub tests. A test module enables it by importing `fake_hub_fixture`."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.config import HubConfig
from bot.hub.access import HubAccess
from bot.hub.publisher import HubPublisher
from storage.store import Store
from tests.fake_hub import FakeHub

TOKEN = "hf_aliceWriteToken0123456789abcdefXYZ"  # alice's token, with write access
READ_TOKEN = "hf_aliceReadOnlyToken0123456789abcdef"
BAD_TOKEN = "hf_revokedToken0123456789abcdefghijkl"  # known to nobody: every request gets 401
QUICK_RETRIES = HubConfig(max_attempts=3, backoff_s=0.05, max_backoff_s=0.2)
ORG = "acme"  # an organisation alice belongs to: her token may create and write repos there


@pytest.fixture(name="fake_hub")
def fake_hub_fixture(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHub]:
    import huggingface_hub
    from huggingface_hub import constants

    # conftest sets HF_HUB_DISABLE_XET=1 before huggingface_hub is imported: Xet cannot be faked.
    assert constants.HF_HUB_DISABLE_XET
    hub = FakeHub(
        {TOKEN: "alice", READ_TOKEN: "alice"}, read_only=frozenset({READ_TOKEN}), orgs={ORG: {"alice"}}
    ).start()
    # HF_HUB_OFFLINE=1 (conftest) blocks every request; this one goes to loopback only.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    try:
        yield hub
    finally:
        # Drop the client's pooled connections to this server now, not in an atexit hook that logs
        # through whatever handlers other tests left on the root logger.
        huggingface_hub.close_session()
        hub.stop()


def access(tmp_path: Path, token: str | None = TOKEN, **config: Any) -> HubAccess:
    hub_config = HubConfig(**{**QUICK_RETRIES.__dict__, **config})
    return HubAccess(config=hub_config, token=token, cache_dir=tmp_path / "hub-cache")


@contextlib.asynccontextmanager
async def open_publisher(
    tmp_path: Path,
    token: str | None = TOKEN,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    **config: Any,
) -> AsyncIterator[HubPublisher]:
    """A HubPublisher whose record of created repos is a real Store in tmp_path (publisher.db)."""
    async with await Store.open(tmp_path / "publisher.db") as store:
        yield HubPublisher(access(tmp_path, token=token, **config), store.hub_repos, sleep=sleep)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def folder_files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def card_metadata(readme: bytes) -> dict[str, Any]:
    """The YAML block at the top of a model card, parsed."""
    text = readme.decode()
    assert text.startswith("---\n"), text[:200]
    return yaml.safe_load(text.split("---\n", 2)[1])
