"""Fetch an adapter by Hub id (owner/name) into the data directory's cache, for /ask and `qlora-bot ask`.

snapshot_download runs in a worker thread (it blocks); it honours HF_ENDPOINT and reuses the cache, so a
second ask of the same adapter costs one metadata request.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.hub.access import HubAccess
from bot.hub.failures import classify
from protocol.errors import UserError

# What an adapter needs to be served; anything else in the repo (checkpoints, other formats) is skipped.
ADAPTER_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt", "*.md"]


async def download_adapter(access: HubAccess, repo_id: str) -> Path:
    """The local folder of the adapter's newest revision; UserError when it cannot be had."""
    if access.cache_dir is None:
        raise UserError(f"cannot download {repo_id}: no Hub cache folder is set", "pass a folder")
    try:
        folder = await asyncio.to_thread(_download, access, repo_id)
    except Exception as error:
        raise _explain(error, access, repo_id) from None
    if not (folder / "adapter_config.json").is_file():
        raise UserError(
            f"the Hub repo {repo_id} holds no peft adapter (no adapter_config.json)",
            "pass the id of a LoRA adapter repo",
        )
    return folder


def _download(access: HubAccess, repo_id: str) -> Path:
    from huggingface_hub import snapshot_download

    folder = snapshot_download(
        repo_id,
        repo_type="model",
        cache_dir=access.cache_dir,
        endpoint=access.endpoint(),
        token=access.token,
        allow_patterns=ADAPTER_PATTERNS,
    )
    return Path(folder)


def _explain(error: Exception, access: HubAccess, repo_id: str) -> UserError:
    name = type(error).__name__
    if name in ("RepositoryNotFoundError", "GatedRepoError"):
        return UserError(
            f"there is no adapter named {repo_id!r} here, and no Hub repo {repo_id} this bot can read",
            "check the name; a private repo needs an HF_TOKEN with read access to it",
        )
    if name == "LocalEntryNotFoundError":  # unreachable (or offline), and not in the cache
        return UserError(
            f"could not reach the Hub to download {repo_id}, and it is not in the cache",
            "try again later",
        )
    failure = classify(error, access.token, download=True)
    return UserError(f"downloading {repo_id} from the Hub failed: {failure.message}", "try again later")
