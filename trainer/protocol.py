"""The one contract between the bot and its worker processes: the job spec and the JSON-lines events.

Stdlib only, so the bot process can import it without pulling in torch. Every event line carries the
protocol version `v` and its `type`; the decoder refuses anything it does not know.
"""

from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from trainer.dataclass_codec import CodecError, from_dict, to_dict
from trainer.json_lines import decode_line, encode_line
from trainer.ranges import Range, above, at_least

PROTOCOL_VERSION = 1

DatasetFormat = Literal["auto", "text", "messages", "sharegpt", "alpaca", "prompt-completion"]
DATASET_FORMATS: tuple[str, ...] = ("auto", "text", "messages", "sharegpt", "alpaca", "prompt-completion")
# Where a dataset may be read from (DESIGN.md, Security): "hub" a Hub dataset id, read from the Hub only
# (never a local folder of that name); "url" an https URL; "upload" a file the bot stored in the job folder
# (source relative to it); "file" a local path, which only the CLI (the machine's own user) may name.
DatasetKind = Literal["hub", "url", "upload", "file"]
PHASES: tuple[str, ...] = ("validating", "loading_model", "tokenizing", "training", "saving")
# The job folder's layout, shared by the worker that writes it and the bot that resumes from it.
LOG_FILE_NAME = "train.log"  # the worker's stderr, kept by whoever spawned it
CHECKPOINTS_DIR = "checkpoints"
ERROR_KINDS: tuple[str, ...] = ("user_error", "oom", "internal", "cancelled")


class ProtocolError(ValueError):
    """A line or spec that does not follow this protocol."""


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
            object.__setattr__(self, "kind", "url" if "://" in self.source else "hub")


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
    # "auto": off when a micro-batch's activations fit in free GPU memory (trainer/memory_plan.py).
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
    # loopback or private addresses, and over plain http: the admin's one way around trainer/url_fetch.py.
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
    output_dir: str  # the job folder: adapter/, checkpoints/ and metadata are written under it
    lora: LoraSpec = field(default_factory=LoraSpec)
    training: TrainingSpec = field(default_factory=TrainingSpec)
    limits: Limits = field(default_factory=Limits)
    base_revision: str | None = None  # Hub revision to pin; None takes the default branch
    resume_from: str | None = None  # a checkpoint folder written by an earlier attempt
    name: str | None = None  # adapter name shown to people
    cache_dir: str | None = None  # derived data shared between jobs (tokenized datasets); None: no cache

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


_HUB_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def hub_id_problem(name: str, *, owner_required: bool = False, what: str = "dataset") -> str | None:
    """What makes `name` no Hub repo id ([owner/]name as the Hub spells them), or None; text only, it never
    looks at the filesystem (a path and an existing folder are both simply not ids)."""
    parts = name.split("/")
    if (
        len(name) > 96
        or len(parts) > 2
        or (owner_required and len(parts) != 2)
        or not all(_HUB_NAME.fullmatch(part) for part in parts)
        or "--" in name
        or ".." in name
        or name.endswith(".git")
    ):
        shape = "owner/name" if owner_required else "owner/name (or a bare name)"
        return f"{name!r} is not a Hub {what} id: write it as {shape}, letters, digits, '-', '_' and '.' only"
    return None


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
        (not spec.output_dir.strip(), "output_dir: must be a folder path"),
        (training.scheduler not in SCHEDULERS, f"training.scheduler: must be one of {', '.join(SCHEDULERS)}"),
        (
            training.gradient_checkpointing not in (True, False, "auto"),
            f'training.gradient_checkpointing: must be true, false or "auto" '
            f"(got {training.gradient_checkpointing!r})",
        ),
        *(
            (True, f"limits.allowed_url_hosts: {host!r} is not a host name or address (no scheme or port)")
            for host in spec.limits.allowed_url_hosts
            if not _BARE_HOST.fullmatch(host)
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


# A name or an IPv4 address, or an IPv6 one (two colons at least) with or without its brackets.
_BARE_HOST = re.compile(r"[A-Za-z0-9._-]+|\[?[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\]?")
_URL_USERINFO = re.compile(r"^([^:/?#]+://)[^/?#]*@")


def redact_url(url: str) -> str:
    """A URL as it may be shown (messages, the job's display, logs): scheme, host, port and path. Its
    user:password, query and fragment never are: signed download links carry their credentials there.
    Text that is not a URL (a Hub id, a path) is returned as it is."""
    if "://" not in url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # an unclosed [ or a bad port: cut what may hold a secret as text
        return _URL_USERINFO.sub(r"\1", re.split(r"[?#]", url, maxsplit=1)[0])
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets, or the port would read as part of it
    return f"{parts.scheme}://{host}{port}{parts.path}"


def newest_checkpoint(job_dir: str | Path) -> str | None:
    """The newest complete checkpoint in a job folder (trainer_state.json is written last)."""
    found = []
    for path in (Path(job_dir) / CHECKPOINTS_DIR).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return str(max(found)[1]) if found else None


def spec_from_dict(data: Any) -> JobSpec:
    try:
        return from_dict(JobSpec, data)
    except CodecError as error:
        raise ProtocolError(f"invalid job spec: {error}") from None


# ---------------------------------------------------------------------------------------------
# Events: one JSON object per line on the worker's stdout.


@dataclass(frozen=True)
class Started:
    pid: int
    attempt_resumes_from: str | None = None


@dataclass(frozen=True)
class Phase:
    name: Literal["validating", "loading_model", "tokenizing", "training", "saving"]
    message: str = ""  # what the phase found worth telling, e.g. "412 rows, format messages"


@dataclass(frozen=True)
class Progress:
    step: int
    total_steps: int
    epoch: float
    tokens_seen: int
    tokens_per_s: float
    eta_s: float | None = None
    loss: float | None = None
    lr: float | None = None
    grad_norm: float | None = None
    gpu_mem_gib: float | None = None


@dataclass(frozen=True)
class Eval:
    step: int
    eval_loss: float


@dataclass(frozen=True)
class Checkpoint:
    step: int
    path: str


@dataclass(frozen=True)
class Done:
    adapter_dir: str
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Error:
    kind: Literal["user_error", "oom", "internal", "cancelled"]
    message: str  # safe to show to the person who started the job
    hint: str = ""  # what to do about it
    checkpoint: str | None = None  # the newest checkpoint, for a resume


Event = Started | Phase | Progress | Eval | Checkpoint | Done | Error

EVENT_TYPES: dict[str, type] = {
    "started": Started,
    "phase": Phase,
    "progress": Progress,
    "eval": Eval,
    "checkpoint": Checkpoint,
    "done": Done,
    "error": Error,
}
_TYPE_NAMES = {cls: name for name, cls in EVENT_TYPES.items()}


def event_type(event: Event) -> str:
    return _TYPE_NAMES[type(event)]


def encode_event(event: Event) -> str:
    """One line of JSON (no trailing newline) with the version and type first."""
    return encode_line(PROTOCOL_VERSION, event_type(event), event)


def decode_event(line: str | bytes) -> Event:
    """Parse one line; raise ProtocolError for bad JSON, another version, or an unknown type or field."""
    return decode_line(line, version=PROTOCOL_VERSION, types=EVENT_TYPES, error=ProtocolError, noun="event")


# ---------------------------------------------------------------------------------------------
# The data check: `python -m trainer.check_data SPEC.json DOWNLOAD_DIR` runs the worker's reading,
# format detection and row validation at submit time and answers with exactly one line.


@dataclass(frozen=True)
class DataChecked:
    origin: (
        str  # how the data is named in messages, e.g. "chats.jsonl" or "Hub dataset org/name (split train)"
    )
    format: str  # the resolved format
    rows: int


CHECK_EVENT_TYPES: dict[str, type] = {"data_checked": DataChecked, "error": Error}
_CHECK_TYPE_NAMES = {cls: name for name, cls in CHECK_EVENT_TYPES.items()}


def encode_check_result(result: DataChecked | Error) -> str:
    return encode_line(PROTOCOL_VERSION, _CHECK_TYPE_NAMES[type(result)], result)


def decode_check_result(line: str | bytes) -> DataChecked | Error:
    return decode_line(
        line, version=PROTOCOL_VERSION, types=CHECK_EVENT_TYPES, error=ProtocolError, noun="data check"
    )
