"""The environment a worker subprocess (trainer or serve) runs with: what it needs, and no secrets
it does not need. DISCORD_TOKEN never leaves the bot; HF_TOKEN only goes where the Hub is used."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import trainer

# Variables a worker may need; everything else (DISCORD_TOKEN above all) stays in the bot.
_PASSED_EXACT = {"PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR", "XDG_CACHE_HOME", "SSL_CERT_FILE"}
_PASSED_PREFIXES = (
    "HF_",
    "HUGGINGFACE_",
    "TRANSFORMERS_",
    "CUDA_",
    "NVIDIA_",
    "PYTORCH_",
    "TORCH",
    "BNB_",
    "OMP_",
)
_SECRET_NAMES = {"HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "DISCORD_TOKEN"}


def worker_environment(
    environ: Mapping[str, str], *, hub_token: bool, cuda_visible_devices: str | None = None
) -> dict[str, str]:
    """Allow-listed variables of `environ`, plus HF_TOKEN when `hub_token` (the worker uses the Hub)."""
    env = {
        name: value
        for name, value in environ.items()
        if name not in _SECRET_NAMES and (name in _PASSED_EXACT or name.startswith(_PASSED_PREFIXES))
    }
    if hub_token and environ.get("HF_TOKEN"):
        env["HF_TOKEN"] = environ["HF_TOKEN"]
    if cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    # The worker must run the same code as the bot, installed or straight from a checkout.
    source_root = str(Path(trainer.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def uses_hub(*names: str) -> bool:
    """Whether any of these model/dataset names may be fetched from the Hub (so may need HF_TOKEN)."""

    def local(name: str) -> bool:
        return name.startswith(("/", ".", "~", "http://", "https://")) or Path(name).expanduser().exists()

    return not all(local(name) for name in names)
