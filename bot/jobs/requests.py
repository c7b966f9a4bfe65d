"""A new job as a person asks for it, from any front end, checked the same way: who asks, the base-model
allow-list, the option caps, what the dataset names and the attached file; then the JobSpec it becomes.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from bot.config import Config, JobDefaults, LimitsConfig
from bot.jobs.specs import clean_name, make_spec, name_from_dataset
from bot.jobs.submission import Upload
from protocol.errors import UserError
from protocol.job_spec import DatasetKind, DatasetSpec, JobSpec
from protocol.sources import DATASET_SUFFIXES, hub_id_problem, source_kind

MIB = 1024 * 1024
NOT_A_SOURCE_HINT = (
    "from Discord a dataset is a Hub id (e.g. mlabonne/guanaco-llama2-1k), the https:// URL of a data file, "
    "or a file attached with the file option; files on the bot's machine are never read"
)
CAPPED = {  # option -> its cap's setting in config.toml (limits.*), in the order they are checked
    "r": "max_r",
    "epochs": "max_epochs",
    "max_steps": "max_steps",
    "max_length": "max_length",
}


@dataclass(frozen=True)
class Requester:
    """Who is asking: "discord:<user id>" or "local:<user>"; admins bypass quotas and may cancel any job.
    `on_this_machine`: the terminal's user, who may name this machine's files and folders (Discord never)."""

    owner: str
    is_admin: bool = False
    on_this_machine: bool = False


@dataclass(frozen=True)
class Attachment:
    """A file attached to the request, checked by its name and announced size before it is read."""

    filename: str
    size: int
    read: Callable[[], Awaitable[bytes]]


@dataclass(frozen=True)
class JobRequest:
    """The options a person set; None (or left out) keeps the configured default."""

    base_model: str | None = None
    dataset: str | None = None  # a Hub id, an https URL, or (on_this_machine only) a path
    file: Attachment | None = None
    format: str = "auto"
    dataset_config: str | None = None
    split: str = "train"
    name: str | None = None
    lora: Mapping[str, Any] = field(default_factory=dict)
    training: Mapping[str, Any] = field(default_factory=dict)
    resume_from: str | None = None


async def checked_request(
    request: JobRequest, requester: Requester, config: Config
) -> tuple[JobSpec, Upload | None]:
    """The spec (and the read upload) of a request, or the UserError that says what to change."""
    limits = config.limits
    if not requester.is_admin:
        _check_base_model(request.base_model or config.defaults.base_model, limits)
    _check_caps(request, limits)
    if (request.dataset is None) == (request.file is None):
        raise UserError(
            "give either dataset or file, not both or neither",
            "dataset: a Hub id or https URL; file: an upload",
        )
    upload = await _read_upload(request.file, limits) if request.file is not None else None
    spec = request_spec(request, config.defaults, local_paths=requester.on_this_machine, upload=upload)
    return spec, upload


def request_spec(
    request: JobRequest, defaults: JobDefaults, *, local_paths: bool, upload: Upload | None = None
) -> JobSpec:
    """The request over the configured defaults (no allow-list or caps: checked_request applies those)."""
    if upload is not None:
        source, kind = f"upload{upload.suffix}", "upload"
    else:
        assert request.dataset is not None
        source, kind = dataset_source(request.dataset, local_paths=local_paths)
    named = upload.filename if upload is not None else source
    return make_spec(
        defaults,
        base_model=request.base_model,
        dataset=DatasetSpec(
            source=source,
            kind=kind,  # type: ignore[arg-type]
            format=request.format,  # type: ignore[arg-type]
            config=request.dataset_config,
            split=request.split,
        ),
        name=clean_name(request.name) if request.name else name_from_dataset(named),
        lora=dict(request.lora),
        training=dict(request.training),
        resume_from=request.resume_from,
    )


def dataset_source(text: str, *, local_paths: bool) -> tuple[str, DatasetKind]:
    """What a dataset name is. With `local_paths` (the terminal's user) a URL, a local file or folder (made
    absolute, since the worker runs in its job folder) or else a Hub id; otherwise a Hub id or an https URL
    only, decided by the text alone, whatever exists on the bot's machine (never "file": DESIGN.md,
    Security)."""
    if local_paths:
        kind = source_kind(text, existing_paths=True)
        if kind == "path":
            return str(Path(text).expanduser().resolve()), "file"
        return text, "url" if kind == "url" else "hub"
    source = text.strip()
    if source.startswith("https://"):
        return source, "url"
    if hub_id_problem(source, owner_required=True) is not None:
        raise UserError(
            f"dataset {source!r} is neither a Hub dataset id (owner/name) nor an https:// URL",
            NOT_A_SOURCE_HINT,
        )
    if source_kind(source) == "path":  # a valid id but for its data file's suffix
        raise UserError(
            f"dataset {source!r} looks like a file name, not a Hub dataset id (owner/name)", NOT_A_SOURCE_HINT
        )
    return source, "hub"


def _check_base_model(base_model: str, limits: LimitsConfig) -> None:
    allowed = limits.base_models
    if base_model not in allowed:
        raise UserError(
            f"base model {base_model} is not on the allowed list (limits.base_models)",
            f"choose one of: {', '.join(allowed)}" if allowed else "ask an admin to allow a base model",
        )


def _check_caps(request: JobRequest, limits: LimitsConfig) -> None:
    options = {**request.lora, **request.training}
    for option, setting in CAPPED.items():
        value, cap = options.get(option), getattr(limits, setting)
        if value is not None and value > cap:
            raise UserError(
                f"{option}={value:g} is above this server's limit of {cap:g} (limits.{setting})",
                f"use {option} {cap:g} or less",
            )


async def _read_upload(file: Attachment, limits: LimitsConfig) -> Upload:
    suffix = PurePosixPath(file.filename).suffix.lower()
    if suffix not in DATASET_SUFFIXES:
        raise UserError(
            f"{file.filename}: unsupported file type {suffix or '(none)'}",
            f"attach one of {', '.join(DATASET_SUFFIXES)}",
        )
    cap = limits.max_attachment_mb
    if file.size > cap * MIB:
        raise UserError(
            f"{file.filename} is {file.size / MIB:.1f} MiB, "
            f"above the {cap:g} MiB limit (limits.max_attachment_mb)",
            "use a smaller file, or publish the dataset on the Hub and pass its id",
        )
    data = await file.read()
    if len(data) > cap * MIB:  # the size Discord reported is not a promise
        raise UserError(f"{file.filename} is above the {cap:g} MiB limit", "use a smaller file")
    return Upload(suffix=suffix, data=data, filename=file.filename)
