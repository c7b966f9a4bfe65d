"""The one contract between the bot and its worker processes: the job spec and the JSON-lines events.

Stdlib only, so the bot process can import it without pulling in torch. Every event line carries the
protocol version `v` and its `type`; the decoder refuses anything it does not know.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainer.dataclass_codec import CodecError, from_dict, to_dict
from trainer.json_lines import decode_line, encode_line
from trainer.ranges import Range, above, at_least

PROTOCOL_VERSION = 1

DatasetFormat = Literal["auto", "text", "messages", "sharegpt", "alpaca", "prompt-completion"]
DATASET_FORMATS: tuple[str, ...] = ("auto", "text", "messages", "sharegpt", "alpaca", "prompt-completion")
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
    source: str  # Hub dataset id, local file path, or https URL
    format: DatasetFormat = "auto"
    config: str | None = None  # Hub dataset configuration name
    split: str = "train"  # Hub split
    # The name people know the data by, used in every message about it: an upload's original file name
    # (it is stored under a generated one). None: the source's own file name or id.
    label: str | None = None


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
    max_dataset_bytes: int = 1 << 30
    max_rows: int = 1_000_000


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
}


def spec_problems(spec: JobSpec) -> list[str]:
    """Every out-of-range value, as "dotted.key: what is wrong"; empty when the spec can run."""
    training = spec.training
    checks = [
        (not spec.base_model.strip(), "base_model: must name a Hub model id or a local folder"),
        (not spec.dataset.source.strip(), "dataset.source: must name a Hub dataset, a file or a URL"),
        (not spec.output_dir.strip(), "output_dir: must be a folder path"),
        (training.scheduler not in SCHEDULERS, f"training.scheduler: must be one of {', '.join(SCHEDULERS)}"),
        (
            training.gradient_checkpointing not in (True, False, "auto"),
            f'training.gradient_checkpointing: must be true, false or "auto" '
            f"(got {training.gradient_checkpointing!r})",
        ),
    ]
    problems = [message for failed, message in checks if failed]
    for key, allowed in SPEC_RANGES.items():
        if key == "training.epochs" and training.max_steps is not None:
            continue  # max_steps overrides epochs: its value is never used
        section, name = key.split(".")
        problem = allowed.problem(key, getattr(getattr(spec, section), name))
        if problem:
            problems.append(problem)
    return problems


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
