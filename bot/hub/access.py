"""How this process reaches the Hub: the token (from the environment only), the endpoint and the cache."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.config import Config, HubConfig


@dataclass(frozen=True)
class HubAccess:
    config: HubConfig = field(default_factory=HubConfig)
    token: str | None = field(default=None, repr=False)
    cache_dir: Path | None = None  # downloads by Hub id land here (the data directory's hub-cache)

    @classmethod
    def for_config(cls, config: Config, token: str | None) -> HubAccess:
        return cls(config=config.hub, token=token, cache_dir=config.hub_cache_dir())

    def endpoint(self) -> str | None:
        """HF_ENDPOINT read at call time (huggingface_hub reads it once, at import); None: the default."""
        return (os.environ.get("HF_ENDPOINT") or "").rstrip("/") or None

    def api(self) -> Any:
        """A huggingface_hub HfApi for this endpoint and token (imported here: only Hub work needs it)."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint(), token=self.token, library_name="qlora-bot")
