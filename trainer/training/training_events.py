"""Translate the Trainer's callbacks into protocol events, and stop at a checkpoint when cancelled.

Progress goes out at every logging step and otherwise at most once per interval, so a fast tiny run
does not flood the bot and a slow 7B run still shows life between logging steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback

from protocol.events import Checkpoint, Eval, Event, Progress
from trainer.worker_io import CancelFlag

# Written into each checkpoint so a resumed job keeps counting tokens (and knows its last measured
# rate) from where it stopped.
TOKENS_FILE = "qlora_bot_tokens.json"


class AlreadyTrained(Exception):
    """The checkpoint a job resumes from is at (or past) the job's last step: there is nothing to train.

    Raised from the trainer's on_train_begin, where the Trainer has loaded the checkpoint: left to run,
    transformers would train one step past max_steps before it checks the limit."""

    def __init__(self, step: int, max_steps: int) -> None:
        super().__init__(f"the checkpoint is at step {step} of {max_steps}")
        self.step = step
        self.max_steps = max_steps


class TokenCounter:
    """The real tokens of the micro-steps trained so far, counted as each one is trained.

    Not at collation: the dataloader collates ahead of training (accelerate prefetches a batch, and the
    Trainer an optimizer step's worth), so a collate-time count includes batches no step has trained
    yet, and a checkpoint saved with it would make a resumed job count them twice. Padding-free packed
    rows are counted from the tensor shape on the host; padded rows from their attention mask, summed on
    the device and read only when someone asks (no GPU sync per step)."""

    def __init__(self) -> None:
        self._host = 0
        self._device: Any = None

    def add(self, inputs: Mapping[str, Any]) -> None:
        mask = inputs.get("attention_mask")
        if mask is None:
            self._host += int(inputs["input_ids"].numel())
        else:
            total = mask.sum()
            self._device = total if self._device is None else self._device + total

    def restore(self, tokens: int) -> None:
        """Continue from a checkpoint's count."""
        self._host += tokens

    @property
    def tokens(self) -> int:
        return self._host + (int(self._device.item()) if self._device is not None else 0)


class EventCallback(TrainerCallback):
    def __init__(
        self,
        emit: Callable[[Event], None],
        cancel: CancelFlag,
        tokens: TokenCounter,
        resume_from: str | None = None,
        interval_s: float = 1.0,
    ) -> None:
        self.resume_from = resume_from
        self.emit = emit
        self.cancel = cancel
        self.tokens = tokens
        self.interval_s = interval_s
        self.loss_history: list[dict[str, float]] = []
        self.eval_history: list[dict[str, float]] = []
        self._last = {"loss": None, "lr": None, "grad_norm": None}
        self._started_at = 0.0
        self._first_step = 0
        self._window = (0.0, 0)  # time and token count at the previous progress event
        self._begin_tokens = 0  # the token count when this attempt's training began
        self._last_rate = 0.0  # the last non-empty window's tokens/s (restored from a checkpoint)
        self._emitted_step = -1

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._started_at = time.monotonic()
        self._first_step = state.global_step  # non-zero when resuming
        if self._first_step and self.resume_from:
            # A resumed run continues the curve and the token count where the checkpoint left them.
            self.loss_history = [_loss_point(entry) for entry in state.log_history if "loss" in entry]
            self.eval_history = [
                {"step": entry["step"], "eval_loss": entry["eval_loss"]}
                for entry in state.log_history
                if "eval_loss" in entry
            ]
            saved_tokens, self._last_rate = _saved_counts(Path(self.resume_from))
            self.tokens.restore(saved_tokens)
            if self.loss_history:
                last = self.loss_history[-1]
                self._last = {"loss": last["loss"], "lr": last.get("lr"), "grad_norm": last.get("grad_norm")}
        self._begin_tokens = self.tokens.tokens
        self._window = (self._started_at, self.tokens.tokens)
        if self._first_step and self._first_step >= state.max_steps:
            self._emit_progress(state, final=True)  # the last word on_train_end would have said
            raise AlreadyTrained(self._first_step, state.max_steps)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.cancel.requested:
            control.should_save = True
            control.should_training_stop = True
        logging_step = args.logging_steps and state.global_step % args.logging_steps == 0
        if not logging_step and time.monotonic() - self._window[0] >= self.interval_s:
            self._emit_progress(state)  # on_log reports logging steps, with their loss
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "loss" in logs:
            self._last = {
                "loss": logs.get("loss"),
                "lr": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
            }
            self.loss_history.append(_loss_point({"step": state.global_step, **logs}))
            self._emit_progress(state)
        if "eval_loss" in logs:
            self.eval_history.append({"step": state.global_step, "eval_loss": logs["eval_loss"]})
            self.emit(Eval(step=state.global_step, eval_loss=float(logs["eval_loss"])))

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        counts = {"tokens": self.tokens.tokens, "tokens_per_s": self._last_rate}
        (path / TOKENS_FILE).write_text(json.dumps(counts), encoding="utf-8")
        self.emit(Checkpoint(step=state.global_step, path=str(path)))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step != self._emitted_step:
            self._emit_progress(state, final=True)

    def _emit_progress(self, state: Any, final: bool = False) -> None:
        now = time.monotonic()
        then, tokens_then = self._window
        tokens_now = self.tokens.tokens
        if final and tokens_now > self._begin_tokens and now > self._started_at:
            # The status a finished job keeps: this attempt's average, not the last few moments'.
            rate = (tokens_now - self._begin_tokens) / (now - self._started_at)
        elif tokens_now > tokens_then and now > then:
            rate = self._last_rate = (tokens_now - tokens_then) / (now - then)
        else:
            # An empty window (a resumed attempt that had nothing left to train, say): the last
            # measured rate, never 0 for a job that trained.
            rate = self._last_rate
        steps_done = state.global_step - self._first_step
        remaining = max(state.max_steps - state.global_step, 0)
        eta = (now - self._started_at) / steps_done * remaining if steps_done else None
        self.emit(
            Progress(
                step=state.global_step,
                total_steps=state.max_steps,
                epoch=float(state.epoch or 0.0),
                tokens_seen=tokens_now,
                tokens_per_s=rate,
                eta_s=eta,
                loss=_float(self._last["loss"]),
                lr=_float(self._last["lr"]),
                grad_norm=_float(self._last["grad_norm"]),
                gpu_mem_gib=_gpu_peak_gib(),
            )
        )
        self._window = (now, tokens_now)
        self._emitted_step = state.global_step


def _loss_point(entry: dict[str, Any]) -> dict[str, float]:
    point = {"step": entry["step"], "loss": entry["loss"]}
    for source, name in (("learning_rate", "lr"), ("grad_norm", "grad_norm")):
        if entry.get(source) is not None:
            point[name] = entry[source]
    return point


def _saved_counts(checkpoint: Path) -> tuple[int, float]:
    """The token count and last rate on_save wrote; 0 for what is missing (older checkpoints have no
    rate) or unreadable."""
    try:
        saved = json.loads((checkpoint / TOKENS_FILE).read_text(encoding="utf-8"))
        return int(saved.get("tokens", 0)), float(saved.get("tokens_per_s", 0.0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0, 0.0


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _gpu_peak_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)
