"""The job spec: what a person asked a training job to do, as the bot stores it and a worker reads it.
Where an attempt runs (its folder, the cache, the checkpoint it resumes) is not in it: protocol/launch.py."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from protocol.codec import CodecError, from_dict, to_dict
from protocol.errors import ProtocolError
from protocol.ranges import Range, above, at_least
from protocol.sources import hub_id_problem, is_bare_host, source_kind

DatasetFormat = Literal["auto", "text", "messages", "sharegpt", "alpaca", "prompt-completion"]
DATASET_FORMATS: tuple[str, ...] = ("auto", "text", "messages", "sharegpt", "alpaca", "prompt-completion")
# Where a dataset may be read from (DESIGN.md, Security): "hub" a Hub dataset id, read from the Hub only
# (never a local folder of that name); "url" an https URL; "upload" a file the bot stored in the job folder
# (source relative to it); "file" a local path, which only the CLI (the machine's own user) may name.
DatasetKind = Literal["hub", "url", "upload", "file"]

# ---------------------------------------------------------------------------------------------
# The job spec: everything a worker needs, nothing it must look up elsewhere.


@dataclass(frozen=True)
class DatasetSpec:
    source: str  # by kind: Hub dataset id, https URL, path inside the job folder, local path
    format: DatasetFormat = "auto"
    config: str | None = None  # Hub dataset configuration name
    split: str = "train"  # Hub split
    # The name people know the data by, used in every message about it: an upload's original file name
    # (it is stored under a generated one). None: the source's own file name or id.
    label: str | None = None
    # Set by the front end that took the source. Left out, it is "url" for a source with "://" and "hub"
    # otherwise: the two kinds anyone may name, so a forgotten kind can never open a local path.
    kind: DatasetKind | None = None

    def __post_init__(self) -> None:
        if self.kind is None:
            object.__setattr__(self, "kind", "url" if source_kind(self.source) == "url" else "hub")


@dataclass(frozen=True)
class LoraSpec:
    r: int = 16
    alpha: int | None = None  # None means 2 * r
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None  # None means every linear layer but the head

    @property
    def resolved_alpha(self) -> int:
        return self.alpha if self.alpha is not None else 2 * self.r


@dataclass(frozen=True)
class TrainingSpec:
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    learning_rate: float = 2e-4
    warmup: float = 0.03  # below 1: fraction of the steps; 1 or more: a number of steps
    scheduler: str = "cosine"
    seed: int = 42
    batch_size: int = 2  # packed rows per device per micro-step
    grad_accum: int = 4
    max_length: int = 2048  # tokens per packed row; longer examples are dropped and reported
    packing: bool = True
    # "auto": off when a micro-batch's activations fit in free GPU memory (trainer/training/memory_plan.py).
    gradient_checkpointing: bool | str = "auto"
    # Plan for at most this much GPU memory (e.g. 16 on a 24 GB card); None plans for what is free.
    memory_limit_gib: float | None = None
    # liger-kernel's fused RMSNorm, SwiGLU, RoPE and linear + cross-entropy, where installed (CUDA only).
    fused_kernels: bool = True
    max_grad_norm: float = 0.3
    weight_decay: float = 0.0
    eval_fraction: float = 0.0  # held-out share of the rows for eval loss; 0 disables eval
    logging_steps: int = 1
    checkpoint_steps: int = 50
    keep_checkpoints: int = 2


@dataclass(frozen=True)
class Limits:
    max_dataset_bytes: int = 1 << 30  # as stored, and again once decompressed (Parquet, the Hub)
    max_rows: int = 1_000_000
    # Seconds a dataset URL's whole download may take (redirects and body included; a trickle never holds
    # a worker longer).
    download_timeout_s: float = 600.0
    # Hosts (names or addresses, as written in URLs) that dataset URLs may reach although they resolve to
    # loopback or private addresses, and over plain http: the admin's one way around trainer/data/url_fetch.py
    allowed_url_hosts: tuple[str, ...] = ()
    # One row (a line of .jsonl/.txt, a CSV record, a Parquet row decoded): 8,192 tokens of text are
    # about 40 KiB, so this only refuses what could never be trained on whole.
    max_row_bytes: int = 1 << 20
    # The training worker's memory (RLIMIT_DATA) while it reads and validates the dataset, before the
    # model stack is imported: a file that needs more fails its job instead of the host.
    data_stage_memory_mb: int = 8192


@dataclass(frozen=True)
class JobSpec:
    base_model: str  # Hub model id or local directory
    dataset: DatasetSpec
    lora: LoraSpec = field(default_factory=LoraSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    limits: Limits = field(default_factory=Limits)
    base_revision: str | None = None  # Hub revision to pin; None takes the default branch
    # Continue from this checkpoint of an earlier job (`train --resume`, a Resume button): part of what
    # was asked. Each attempt is handed the checkpoint it resumes at launch (protocol/launch.py).
    resume_from: str | None = None
    name: str | None = None  # adapter name shown to people

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        try:
            return spec_from_dict(json.loads(text))
        except json.JSONDecodeError as error:
            raise ProtocolError(f"job spec is not valid JSON: {error}") from None

    def replace(self, **changes: Any) -> JobSpec:
        return dataclasses.replace(self, **changes)


SCHEDULERS: tuple[str, ...] = (
    "linear",
    "cosine",
    "constant",
    "constant_with_warmup",
    "polynomial",
    "inverse_sqrt",
)


def dataset_problems(dataset: DatasetSpec) -> list[str]:
    """Whether the source fits its kind: a Hub id, a URL, or a path that stays inside the job folder."""
    source = dataset.source.strip()
    if not source:
        return ["dataset.source: must name a Hub dataset, a file or a URL"]
    if dataset.kind == "hub":
        problem = hub_id_problem(source)
        return [f"dataset.source: {problem}"] if problem else []
    if dataset.kind == "url" and "://" not in source:
        return [f"dataset.source: {source!r} is not a URL (https://...)"]
    if dataset.kind == "upload":
        parts = PurePosixPath(source).parts
        if not parts or PurePosixPath(source).is_absolute() or ".." in parts or "\\" in source:
            return ["dataset.source: an upload is named by its place inside the job folder"]
    return []


# The range of every numeric spec field, by its dotted key. The bot checks its configured job defaults
# against the same table at start-up (bot/config.py), and config.toml documents each range.
SPEC_RANGES: dict[str, Range] = {
    "lora.r": at_least(1),
    "lora.alpha": at_least(1),
    "lora.dropout": Range(0, 1, high_open=True),
    "training.epochs": above(0),
    "training.max_steps": at_least(1),
    "training.learning_rate": above(0),
    "training.warmup": at_least(0),
    "training.seed": at_least(0, 2**32 - 1),  # numpy refuses seeds outside 32 bits
    "training.batch_size": at_least(1),
    "training.grad_accum": at_least(1),
    "training.max_length": at_least(16),
    "training.memory_limit_gib": above(0),
    "training.max_grad_norm": above(0),
    "training.weight_decay": at_least(0),
    "training.eval_fraction": at_least(0, 0.5),
    "training.logging_steps": at_least(1),
    "training.checkpoint_steps": at_least(1),
    "training.keep_checkpoints": at_least(1),
    "limits.max_dataset_bytes": at_least(1),
    "limits.max_rows": at_least(1),
    "limits.max_row_bytes": at_least(1),
    "limits.data_stage_memory_mb": at_least(1),
    "limits.download_timeout_s": above(0),
}


def spec_problems(spec: JobSpec) -> list[str]:
    """Every out-of-range value, as "dotted.key: what is wrong"; empty when the spec can run."""
    training = spec.training
    checks = [
        (not spec.base_model.strip(), "base_model: must name a Hub model id or a local folder"),
        (training.scheduler not in SCHEDULERS, f"training.scheduler: must be one of {', '.join(SCHEDULERS)}"),
        (
            training.gradient_checkpointing not in (True, False, "auto"),
            f'training.gradient_checkpointing: must be true, false or "auto" '
            f"(got {training.gradient_checkpointing!r})",
        ),
        *(
            (True, f"limits.allowed_url_hosts: {host!r} is not a host name or address (no scheme or port)")
            for host in spec.limits.allowed_url_hosts
            if not is_bare_host(host)
        ),
    ]
    problems = dataset_problems(spec.dataset) + [message for failed, message in checks if failed]
    for key, allowed in SPEC_RANGES.items():
        if key == "training.epochs" and training.max_steps is not None:
            continue  # max_steps overrides epochs: its value is never used
        section, name = key.split(".")
        problem = allowed.problem(key, getattr(getattr(spec, section), name))
        if problem:
            problems.append(problem)
    return problems


def spec_from_dict(data: Any) -> JobSpec:
    try:
        return from_dict(JobSpec, data)
    except CodecError as error:
        raise ProtocolError(f"invalid job spec: {error}") from None
