"""A job folder's contract: its layout, and the files the worker writes there for the bot to read (the
adapter record, metrics, loss history), each a frozen dataclass read and written through the strict codec.
Every name of a file or folder in it is spelled here and nowhere else."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

from protocol.codec import CodecError, from_dict, to_dict
from protocol.errors import ProtocolError
from protocol.job_spec import JobSpec
from protocol.launch import Launch

T = TypeVar("T")

LOG_FILE_NAME = "train.log"  # the worker's stderr, kept by whoever spawned it
SPEC_FILE_NAME = "spec.json"  # the job spec as the worker was handed it
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
ADAPTER_RECORD = "qlora_bot.json"  # beside the adapter's weights: what it was trained from and how
ADAPTER_CONFIG = "adapter_config.json"  # peft's, in the adapter and in every checkpoint
METRICS_FILE = "metrics.json"
LOSS_HISTORY_FILE = "loss_history.json"
LOSS_CHART = "loss.png"  # train and eval loss by step, drawn by the bot when the job succeeds
MODEL_CARD = "README.md"  # the adapter's model card (ours; trl and peft write theirs under this name too)
TRAINER_STATE = "trainer_state.json"  # a checkpoint's; written last, so its presence means complete
UPLOAD_DIR = "upload"  # a dataset file a person attached, under a generated name

PromptStyle = Literal["chat", "raw"]


class JobFolder:
    """Where everything of one job lies."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = path / LOG_FILE_NAME
        self.spec_file = path / SPEC_FILE_NAME
        self.checkpoints = path / CHECKPOINTS_DIR
        self.adapter = path / ADAPTER_DIR
        self.record = self.adapter / ADAPTER_RECORD
        self.metrics = path / METRICS_FILE
        self.loss_history = path / LOSS_HISTORY_FILE
        self.loss_chart = path / LOSS_CHART
        self.card = self.adapter / MODEL_CARD


@dataclass(frozen=True)
class TrainedSpec(JobSpec):
    """The spec an adapter was trained from, as its record keeps it: what was asked with the base revision
    pinned, and where the attempt ran (resume_from: the checkpoint it continued). The paths stay on this
    machine: bot/hub/public_record.py publishes none of them, so a record read back from the Hub has none."""

    # Named as the spec named them before the launch was split off, so every record reads alike.
    output_dir: str | None = None  # the job folder
    cache_dir: str | None = None  # the cache of derived data it used; None: none

    @classmethod
    def of(cls, spec: JobSpec, launch: Launch) -> TrainedSpec:
        asked = {name.name: getattr(spec, name.name) for name in dataclasses.fields(JobSpec)}
        asked["resume_from"] = launch.resume_checkpoint
        return cls(**asked, output_dir=launch.job_dir, cache_dir=launch.cache_dir)


@dataclass(frozen=True)
class AdapterRecord:
    """qlora_bot.json: how to load and ask the adapter, and how it was made."""

    spec: TrainedSpec
    data_format: str  # the format the dataset was read as ("messages", "text", ...)
    prompt_style: PromptStyle  # "chat": asked through the chat template; "raw": as plain text
    chat_template_source: str
    runtime: dict[str, Any] = field(default_factory=dict)  # device, dtype, ...; absent in the first records


@dataclass(frozen=True)
class Metrics:
    """metrics.json: the job's figures, over every attempt (also sent in the Done event)."""

    steps: int
    tokens: int
    final_loss: float | None = None
    train_loss: float | None = None  # mean over the job, resumed steps included
    eval_loss: float | None = None
    epochs: float | None = None
    train_runtime_s: float | None = None
    total_runtime_s: float | None = None
    examples: int | None = None
    eval_examples: int | None = None


@dataclass(frozen=True)
class LossPoint:
    step: int
    loss: float | None
    lr: float | None = None
    grad_norm: float | None = None


@dataclass(frozen=True)
class EvalPoint:
    step: int
    eval_loss: float


@dataclass(frozen=True)
class LossHistory:
    """loss_history.json: the train loss at each logging step and the eval loss at each evaluation."""

    train: tuple[LossPoint, ...] = ()
    eval: tuple[EvalPoint, ...] = ()

    @classmethod
    def of(cls, train: list[dict[str, Any]], evals: list[dict[str, Any]]) -> LossHistory:
        """From the points the training callback collects ({"step": 3, "loss": 1.2, "lr": ...})."""
        return cls(tuple(LossPoint(**point) for point in train), tuple(EvalPoint(**point) for point in evals))


def upload_source(suffix: str) -> str:
    """Where an upload is stored in its job folder, relative to it: the spec's dataset source for it."""
    return f"{UPLOAD_DIR}/dataset{suffix}"


def write_file(path: Path, content: AdapterRecord | Metrics | LossHistory) -> None:
    """One of the worker's files, as the strict codec writes it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_dict(content), indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_record(adapter_dir: Path) -> AdapterRecord | None:
    """The adapter record of an adapter folder; None when it has none (a peft adapter made elsewhere)."""
    return _read(AdapterRecord, adapter_dir / ADAPTER_RECORD)


def read_metrics(job_dir: Path) -> Metrics | None:
    return _read(Metrics, JobFolder(job_dir).metrics)


def read_loss_history(job_dir: Path) -> LossHistory | None:
    return _read(LossHistory, JobFolder(job_dir).loss_history)


def _read(cls: type[T], path: Path) -> T | None:
    """None when the file is absent; ProtocolError naming the file and the key when it is not `cls`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    try:
        return from_dict(cls, json.loads(text))
    except json.JSONDecodeError as error:
        raise ProtocolError(f"{path.name} is not valid JSON: {error}") from None
    except CodecError as error:
        raise ProtocolError(f"{path.name}: {error}") from None


def library_json(path: Path) -> dict[str, Any]:
    """A JSON object a library wrote (the Trainer's state, peft's adapter config), or {} when it is
    missing or not one: only a few of its keys are ever read, and each is checked where it is used."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def newest_checkpoint(job_dir: str | Path) -> str | None:
    """The newest complete checkpoint in a job folder (trainer_state.json is written last)."""
    found = []
    for path in JobFolder(Path(job_dir)).checkpoints.glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / TRAINER_STATE).is_file():
            found.append((int(step), path))
    return str(max(found)[1]) if found else None
