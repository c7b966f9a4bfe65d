"""Render a job's events in the terminal: a live progress bar on a TTY, plain lines elsewhere; and one line
for any event, as `qlora-bot job` lists them."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from bot.jobs.summaries import format_duration, phase_heading
from protocol.events import Checkpoint, Done, Error, Eval, Event, Phase, Started
from protocol.events import Progress as ProgressEvent


def describe_progress(event: ProgressEvent) -> str:
    parts = [f"step {event.step}/{event.total_steps}", f"epoch {event.epoch:.2f}"]
    if event.loss is not None:
        parts.append(f"loss {event.loss:.4f}")
    parts.append(f"{event.tokens_per_s:,.0f} tok/s")
    parts.append(f"ETA {format_duration(event.eta_s)}")
    if event.gpu_mem_gib is not None:
        parts.append(f"{event.gpu_mem_gib:.1f} GiB")
    return ", ".join(parts)


def describe_end(job: Any) -> str:
    """Why a job ended, as the terminal says it: a cancel names who asked (an owner id is fine here)."""
    message = job.error_message or job.state
    if job.state == "cancelled" and message == "cancelled" and job.cancel_requested_by:
        return f"cancelled by {job.cancel_requested_by}"
    return message


def describe_event(event: Event) -> str:
    """One line for any event, as `qlora-bot job` lists them."""
    if isinstance(event, Started):
        resumed = f", resuming from {event.attempt_resumes_from}" if event.attempt_resumes_from else ""
        return f"worker started (pid {event.pid}{resumed})"
    if isinstance(event, Phase):
        label = phase_heading(event.name)
        return f"{label}: {event.message}" if event.message else label
    if isinstance(event, ProgressEvent):
        return describe_progress(event)
    if isinstance(event, Eval):
        return f"eval loss {event.eval_loss:.4f} at step {event.step}"
    if isinstance(event, Checkpoint):
        return f"checkpoint saved at step {event.step}: {event.path}"
    if isinstance(event, Done):
        return f"done: adapter in {event.adapter_dir}"
    hint = f" ({event.hint})" if event.hint else ""
    return f"{event.kind}: {event.message}{hint}"


class TerminalProgress:
    """Consumes events in order; call close() when the stream ends."""

    def __init__(self, console: Console | None = None, plain_interval_s: float = 10.0) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.live = self.console.is_terminal
        self.plain_interval_s = plain_interval_s
        self._last_plain = 0.0
        self._last_state: tuple[str, int] | None = None
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[detail]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("Starting", total=None, detail="")

    def handle(self, event: Event) -> None:
        if isinstance(event, ProgressEvent):
            self._advance(event)
        elif isinstance(event, (Done, Error)):
            self.close()
        else:
            if isinstance(event, Phase):
                self._describe(phase_heading(event.name))
            self._line(describe_event(event))

    def state(self, job: Any) -> None:
        """A change of the job itself (queued, re-queued after a crash), shown once per change."""
        key = (job.state, job.attempt)
        if key == self._last_state:
            return
        self._last_state = key
        if job.state == "queued" and job.attempt > 1:
            resume = job.resume_point or "the start"
            self._line(
                f"attempt {job.attempt - 1} ended early; resuming from {resume} (attempt {job.attempt})"
            )
        elif job.state == "queued":
            self._describe("Queued")
            self._line("queued: waiting for a free GPU slot")

    def _advance(self, event: ProgressEvent) -> None:
        detail = describe_progress(event)
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, total=event.total_steps, completed=event.step, detail=detail)
            return
        now = time.monotonic()
        if now - self._last_plain >= self.plain_interval_s or event.step == event.total_steps:
            self._last_plain = now
            self.console.print(detail, highlight=False)

    def _describe(self, label: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=label)

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
