"""What a training worker says, one JSON object per line on its stdout, and the data check's one answer.

Every line carries the protocol version `v` and its `type`; the decoder refuses anything it does not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from protocol.errors import ProtocolError
from protocol.json_lines import decode_line, encode_line

PROTOCOL_VERSION = 1
PHASES: tuple[str, ...] = ("validating", "loading_model", "tokenizing", "training", "saving")
ERROR_KINDS: tuple[str, ...] = ("user_error", "oom", "internal", "cancelled")


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
# The data check: `python -m trainer.data.check SPEC.json DOWNLOAD_DIR` runs the worker's reading,
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
