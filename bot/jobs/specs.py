"""Build a JobSpec from the config's job defaults plus whatever a person overrode (flags or options)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

from bot.config import JobDefaults
from protocol.job_spec import DatasetSpec, JobSpec
from protocol.sources import redact_url, source_kind


def make_spec(
    defaults: JobDefaults,
    *,
    base_model: str | None,
    dataset: DatasetSpec,
    name: str | None,
    lora: dict[str, Any],
    training: dict[str, Any],
    resume_from: str | None = None,
) -> JobSpec:
    """Overrides set to None keep the default (the job folder is chosen when the job is submitted)."""
    return JobSpec(
        base_model=local_model_path(base_model or defaults.base_model),
        dataset=dataset,
        lora=_override(defaults.lora, lora),
        training=_override(defaults.training, training),
        limits=defaults.limits,
        resume_from=resume_from,
        name=name or name_from_dataset(dataset.source),
    )


def local_model_path(name: str) -> str:
    """A base model folder on this machine as an absolute path (workers run in their job folders, not in
    the bot's); a Hub id as it is."""
    path = Path(name).expanduser()
    is_folder = source_kind(name, existing_paths=True) == "path" and path.is_dir()
    return str(path.resolve()) if is_folder else name


def name_from_dataset(source: str) -> str:
    """A readable adapter name from a dataset id, path or URL: org/guanaco-1k -> guanaco-1k (never from a
    URL's query or user:password)."""
    stem = Path(redact_url(source).rstrip("/")).stem or "adapter"
    return clean_name(stem)


def clean_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")[:64] or "adapter"


def _override(instance: Any, changes: dict[str, Any]) -> Any:
    return dataclasses.replace(
        instance, **{key: value for key, value in changes.items() if value is not None}
    )
