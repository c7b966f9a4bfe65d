"""Load config.toml into one frozen dataclass tree, and the secrets from the environment.

Unknown keys, wrong types and numbers out of their documented range stop start-up naming the dotted key;
a secret written into the file is refused (it would end up in backups and screenshots). Defaults live in
the dataclasses; config.toml at the repository root documents every one of them (and every range), and a
test keeps the two in sync.
"""

from __future__ import annotations

import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol.codec import CodecError, from_dict
from protocol.job_spec import SPEC_RANGES, DatasetSpec, JobSpec, Limits, LoraSpec, TrainingSpec, spec_problems
from protocol.ranges import Range, above, at_least

HOME_ENV = "QLORA_BOT_HOME"
DEFAULT_CONFIG_FILE = "config.toml"


class ConfigError(ValueError):
    """The config file cannot be used; the message names the file and the dotted key."""


@dataclass(frozen=True)
class PathsConfig:
    data_dir: str = ""


@dataclass(frozen=True)
class JobDefaults:
    base_model: str = ""
    lora: LoraSpec = field(default_factory=LoraSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    limits: Limits = field(default_factory=Limits)


@dataclass(frozen=True)
class WorkerConfig:
    python: str = ""
    cancel_grace_s: float = 120.0


@dataclass(frozen=True)
class QueueConfig:
    max_queued_per_user: int = 5
    max_running_per_user: int = 1
    max_jobs_per_day: int = 20
    max_attempts: int = 3
    max_wall_time_h: float = 24.0
    default_job_minutes: float = 30.0


@dataclass(frozen=True)
class GpuConfig:
    devices: tuple[str, ...] = ()
    detect: bool = True
    jobs_per_device: int = 1


@dataclass(frozen=True)
class DiscordConfig:
    guild_ids: tuple[int, ...] = ()
    finetune_roles: tuple[str, ...] = ()
    ask_roles: tuple[str, ...] = ()
    admin_roles: tuple[str, ...] = ()
    status_edit_interval_s: float = 15.0
    old_status_edit_interval_s: float = 60.0
    channel_edits_per_minute: int = 20
    outbox_poll_s: float = 1.0
    outbox_backoff_s: float = 2.0
    outbox_max_backoff_s: float = 300.0
    outbox_nonce_window_s: float = 60.0
    outbox_history_limit: int = 100


@dataclass(frozen=True)
class LimitsConfig:
    base_models: tuple[str, ...] = (
        "meta-llama/Llama-2-7b-hf",
        "meta-llama/Llama-3.1-8B-Instruct",
        "mistralai/Mistral-7B-Instruct-v0.3",
        "Qwen/Qwen2.5-7B-Instruct",
    )
    max_attachment_mb: float = 25.0
    max_steps: int = 5000
    max_epochs: float = 10.0
    max_r: int = 128
    max_length: int = 8192
    data_check_timeout_s: float = 300.0
    data_check_memory_mb: int = 8192


@dataclass(frozen=True)
class ServeConfig:
    idle_timeout_s: float = 600.0
    max_adapters: int = 8
    max_adapter_mb: int = 2048
    max_batch: int = 4
    share_gpu_with_training: bool = True
    device: str = ""
    default_max_new_tokens: int = 256
    max_new_tokens_limit: int = 1024
    request_timeout_s: float = 300.0
    stream_edit_interval_s: float = 1.0


@dataclass(frozen=True)
class HubConfig:
    namespace: str = ""
    private: bool = True
    max_attempts: int = 4
    backoff_s: float = 5.0
    max_backoff_s: float = 120.0


@dataclass(frozen=True)
class Config:
    paths: PathsConfig = field(default_factory=PathsConfig)
    defaults: JobDefaults = field(default_factory=JobDefaults)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    gpus: GpuConfig = field(default_factory=GpuConfig)
    discord: DiscordConfig = field(default_factory=DiscordConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    hub: HubConfig = field(default_factory=HubConfig)

    def data_dir(self) -> Path:
        """QLORA_BOT_HOME, else paths.data_dir, else ~/.local/share/qlora-bot."""
        chosen = os.environ.get(HOME_ENV) or self.paths.data_dir
        if chosen:
            return Path(chosen).expanduser()
        base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        return Path(base) / "qlora-bot"

    def jobs_dir(self) -> Path:
        return self.data_dir() / "jobs"

    def database_path(self) -> Path:
        return self.data_dir() / "qlora-bot.db"

    def logs_dir(self) -> Path:
        return self.data_dir() / "logs"

    def cache_dir(self) -> Path:
        """Derived data the workers share between jobs (tokenized datasets); deleting it loses nothing."""
        return self.data_dir() / "cache"

    def hub_cache_dir(self) -> Path:
        """Where adapters asked for by Hub id are downloaded to."""
        return self.data_dir() / "hub-cache"


@dataclass(frozen=True)
class Secrets:
    """Tokens from the environment only; repr never shows them."""

    discord_token: str | None = field(default=None, repr=False)
    hf_token: str | None = field(default=None, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Secrets:
        env = os.environ if environ is None else environ
        return cls(discord_token=env.get("DISCORD_TOKEN") or None, hf_token=env.get("HF_TOKEN") or None)


def load_config(path: Path | None = None) -> Config:
    """Read `path` (default: ./config.toml when present, else built-in defaults) and validate it."""
    if path is None:
        path = Path(DEFAULT_CONFIG_FILE)
        if not path.exists():
            return Config()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    _refuse_secrets(data, path)
    try:
        config = from_dict(Config, data)
    except CodecError as error:
        raise ConfigError(f"{path}: {error}") from None
    problems = config_problems(config)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems))
    return config


# The range of every numeric key outside [defaults] (whose ranges are the job spec's, SPEC_RANGES), by its
# dotted key; config.toml documents each. A list's range applies to each of its items.
CONFIG_RANGES: dict[str, Range] = {
    "worker.cancel_grace_s": above(0),
    "queue.max_queued_per_user": at_least(1),
    "queue.max_running_per_user": at_least(1),
    "queue.max_jobs_per_day": at_least(1),
    "queue.max_attempts": at_least(1),
    "queue.max_wall_time_h": above(0),
    "queue.default_job_minutes": above(0),
    "gpus.jobs_per_device": at_least(1),
    "discord.guild_ids": at_least(1),
    "discord.status_edit_interval_s": above(0),
    "discord.old_status_edit_interval_s": above(0),
    "discord.channel_edits_per_minute": at_least(1),
    "discord.outbox_poll_s": above(0),
    "discord.outbox_backoff_s": above(0),
    "discord.outbox_max_backoff_s": above(0),
    "discord.outbox_nonce_window_s": at_least(0),
    "discord.outbox_history_limit": at_least(1),
    "limits.max_attachment_mb": above(0),
    "limits.max_steps": at_least(1),
    "limits.max_epochs": above(0),
    "limits.max_r": at_least(1),
    "limits.max_length": at_least(16),
    "limits.data_check_timeout_s": above(0),
    "limits.data_check_memory_mb": at_least(256),  # below this the checking process cannot even start
    "serve.idle_timeout_s": above(0),
    "serve.max_adapters": at_least(1),
    "serve.max_adapter_mb": at_least(1),
    "serve.max_batch": at_least(1),
    "serve.default_max_new_tokens": at_least(1),
    "serve.max_new_tokens_limit": at_least(1),
    "serve.request_timeout_s": above(0),
    "serve.stream_edit_interval_s": above(0),
    "hub.max_attempts": at_least(1),
    "hub.backoff_s": above(0),
    "hub.max_backoff_s": above(0),
}


def range_of(key: str) -> Range | None:
    """The declared range of a numeric dotted key; None for a key that declares none."""
    if key.startswith("defaults."):
        return SPEC_RANGES.get(key.removeprefix("defaults."))
    return CONFIG_RANGES.get(key)


def config_problems(config: Config) -> list[str]:
    """Every value out of its range, as "dotted.key: must be ... (got ...)"; empty when the config can run."""
    problems = []
    for key, allowed in CONFIG_RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        for index, item in enumerate(value) if isinstance(value, tuple) else [(None, value)]:
            problem = allowed.problem(key if index is None else f"{key}[{index}]", item)
            if problem:
                problems.append(problem)
    serve = config.serve
    if serve.default_max_new_tokens > serve.max_new_tokens_limit:
        problems.append(
            f"serve.default_max_new_tokens: must be at most serve.max_new_tokens_limit "
            f"({serve.max_new_tokens_limit}) (got {serve.default_max_new_tokens})"
        )
    # The job defaults go through the same checks as every submitted spec: a default out of range would
    # fail every job that does not override it, long after start-up.
    defaults = config.defaults
    spec = JobSpec(
        base_model=defaults.base_model or "(named by each job)",
        dataset=DatasetSpec(source="named-by-each-job", kind="hub"),  # only the defaults are checked here
        lora=defaults.lora,
        training=defaults.training,
        limits=defaults.limits,
    )
    problems += [f"defaults.{problem}" for problem in spec_problems(spec)]
    return problems


# Key names that hold credentials (`max_new_tokens` is not one: it ends in "tokens").
_SECRET_KEY = re.compile(r"(^|_)(token|secret|password|passwd|api_key|apikey)$", re.IGNORECASE)
# Values shaped like Hugging Face or Discord bot tokens, whatever key they hide under, anywhere in a string
# ("Bot <token>", a URL with one in it) or in a list: a token pasted anywhere in the file is a leak.
_SECRET_VALUE = re.compile(
    r"(?<![A-Za-z0-9_.-])"
    r"(hf_[A-Za-z0-9]{20,}|[A-Za-z0-9_-]{23,28}\.[A-Za-z0-9_-]{6}\.[A-Za-z0-9_-]{27,})"
    r"(?![A-Za-z0-9_.-])"
)


def _refuse_secrets(data: Any, path: Path, prefix: str = "") -> None:
    """Refuse credential-named keys and token-shaped strings at any depth; the value is never echoed."""
    if isinstance(data, dict):
        for key, value in data.items():
            if _SECRET_VALUE.search(key):  # a quoted key is a string too; naming it would echo the token
                _secret_at(path, f"{prefix or '(top level)'} (a key shaped like a token)")
            dotted = f"{prefix}.{key}" if prefix else key
            if _SECRET_KEY.search(key):
                _secret_at(path, dotted)
            _refuse_secrets(value, path, dotted)
    elif isinstance(data, list):
        for index, item in enumerate(data):
            _refuse_secrets(item, path, f"{prefix}[{index}]")
    elif isinstance(data, str) and _SECRET_VALUE.search(data):
        _secret_at(path, prefix)


def _secret_at(path: Path, where: str) -> None:
    raise ConfigError(
        f"{path}: {where}: secrets are not read from the config file; "
        "set DISCORD_TOKEN and HF_TOKEN in the environment instead, and remove it"
    )
