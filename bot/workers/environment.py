"""The environment a worker subprocess (trainer, data check or serve) runs with: what it needs, no secrets it
does not need, the Hub offline unless it uses the Hub, no telemetry, and every cache under the data directory.
DISCORD_TOKEN never leaves the bot; HF_TOKEN only goes where the Hub is used."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import protocol
from protocol.job_spec import JobSpec
from protocol.sources import source_kind

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
# Offline, huggingface_hub, datasets and transformers never connect; that also stops bitsandbytes' kernel
# lookup on the Hub (the `kernels` package honours HF_HUB_OFFLINE) and trl's telemetry ping.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
# trl sends its telemetry through huggingface_hub's send_telemetry, which honours both.
NO_TELEMETRY = {"HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1"}


def worker_environment(
    environ: Mapping[str, str],
    *,
    hub_token: bool,
    cuda_visible_devices: str | None = None,
    cache_root: Path | None = None,
) -> dict[str, str]:
    """Allow-listed variables of `environ`; with `hub_token` (the worker uses the Hub) HF_TOKEN and the Hub
    online, without it the Hub offline; telemetry off; with `cache_root`, every cache and TMPDIR under it."""
    env = {
        name: value
        for name, value in environ.items()
        if name not in _SECRET_NAMES and (name in _PASSED_EXACT or name.startswith(_PASSED_PREFIXES))
    }
    if hub_token and environ.get("HF_TOKEN"):
        env["HF_TOKEN"] = environ["HF_TOKEN"]
    if not hub_token:
        env.update(OFFLINE)
    env.update(NO_TELEMETRY)
    if cache_root is not None:
        env.update(cache_environment(cache_root))
    if cuda_visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = cuda_visible_devices
    # The worker must run the same code as the bot, installed or straight from a checkout: trainer/ sits
    # beside protocol/ (the one package both import), so the bot finds it without importing it.
    source_root = str(Path(protocol.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, environ.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def cache_environment(cache_root: Path) -> dict[str, str]:
    """Where the libraries a worker loads keep their files: under `cache_root` (in the data directory),
    never in ~/.cache or /tmp, so every file a worker writes lies under the data directory. The folders
    are made here: triton and torch's inductor refuse a cache folder that does not exist yet."""
    root = cache_root.absolute()
    folders = {
        "HF_HOME": root / "huggingface",
        "HF_HUB_CACHE": root / "huggingface" / "hub",
        "HF_DATASETS_CACHE": root / "huggingface" / "datasets",
        "TORCHINDUCTOR_CACHE_DIR": root / "torchinductor",
        "TRITON_CACHE_DIR": root / "triton",
        "TRITON_HOME": root / "triton-home",
        "XDG_CACHE_HOME": root / "xdg",
        "CUDA_CACHE_PATH": root / "cuda",  # the driver's JIT cache, else ~/.nv
        "TMPDIR": root / "tmp",
    }
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {name: str(folder) for name, folder in folders.items()}


def uses_hub(*names: str) -> bool:
    """Whether any of these model names may be fetched from the Hub (so may need HF_TOKEN): what is not a URL
    or a path (a folder here counts: model names reach this process from its own configuration or from an
    adapter's record, never unchecked from a channel)."""
    return any(source_kind(name, existing_paths=True) == "hub" for name in names)


def job_uses_hub(spec: JobSpec) -> bool:
    """A job uses the Hub when its base model is a Hub id or its dataset a Hub dataset (never for a URL,
    an upload or a local file, whatever the name looks like)."""
    return uses_hub(spec.base_model) or spec.dataset.kind == "hub"
