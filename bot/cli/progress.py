"""Render a job's events in the terminal: a live progress bar on a TTY, plain lines elsewhere; and one line
for any event, as `qlora-bot job` lists them."""

from __future__ import annotations

import textwrap
import time
from typing import Any

from rich.console import Console

from bot.cli.progress_line import progress_line, waiting_line
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
    """Consumes events in order; call close() when the stream ends.

    On a terminal one live line sits under the event lines (the phase, then bar, step, loss, tokens/s and
    ETA, or where the job stands in the queue), redrawn in place and laid out for the terminal's width
    (bot/cli/progress_line.py); elsewhere (a pipe, a log) progress is a plain line every
    `plain_interval_s`. At the end the live line is cleared when the job succeeded, because the summary
    states the final figures, and left on screen when it did not, to show where the job stopped.
    """

    def __init__(self, console: Console | None = None, plain_interval_s: float = 10.0) -> None:
        self.console = console or Console(stderr=True, soft_wrap=True)
        self.live = self.console.is_terminal
        self.plain_interval_s = plain_interval_s
        self._last_plain = 0.0
        self._last_state: tuple[str, int] | None = None
        self._queued = False
        self._last_waiting: str | None = None
        self._label = "Starting"  # the phase heading while no progress is shown
        self._progress: ProgressEvent | None = None
        self._shown = ""  # what the live line shows now ("" when nothing is drawn)
        encoding = (getattr(self.console.file, "encoding", None) or "").lower().replace("-", "")
        self._ascii = encoding not in ("utf8", "utf16", "utf32")
        self._draw()

    @property
    def queued(self) -> bool:
        """Whether the job is shown as waiting in the queue (its last state change said so)."""
        return self._queued

    def handle(self, event: Event) -> None:
        if isinstance(event, ProgressEvent):
            self._advance(event)
            return
        if isinstance(event, Done):
            self.close(keep_line=False)
            return
        if isinstance(event, Error):
            self.close()
            return
        if isinstance(event, Started):
            self._queued = False
            self._progress = None  # a new attempt counts its own steps
        if isinstance(event, Phase):
            self._label = phase_heading(event.name)
            if event.name not in ("training", "saving"):
                self._progress = None  # saving keeps the last step in view; the earlier phases have none
        self._line(describe_event(event))

    def state(self, job: Any) -> None:
        """A change of the job itself (queued, re-queued after a crash), shown once per change."""
        key = (job.state, job.attempt)
        if key == self._last_state:
            return
        self._last_state = key
        self._queued = job.state == "queued"
        if job.state == "queued" and job.attempt > 1:
            resume = job.resume_point or "the start"
            self._line(
                f"attempt {job.attempt - 1} ended early; resuming from {resume} (attempt {job.attempt})"
            )
        if job.state == "queued":
            self._label = "Queued"
            self._progress = None
            self._draw()

    def waiting(self, position: str, wait: str | None, reason: str) -> None:
        """Where the queued job stands (bot/jobs/summaries.py words it): redrawn in place on a terminal,
        a plain line when the position or the reason changes elsewhere."""
        if not self._queued:
            return  # the job left the queue while this was being worked out
        if self.live:
            self._label = waiting_line(position, wait, reason, self._width())
            self._draw()
            return
        changed = f"{position} {reason}"
        if wait is not None and changed != self._last_waiting:  # a job about to start is not worth a line
            self._last_waiting = changed
            self._line(waiting_line(position, wait, reason, 10_000))

    def _advance(self, event: ProgressEvent) -> None:
        self._progress = event
        if self.live:
            self._draw()
            return
        # The last step is not forced out here: the summary that follows states the final figures.
        now = time.monotonic()
        if now - self._last_plain >= self.plain_interval_s:
            self._last_plain = now
            self.console.print(progress_line(event, 10_000, bar=False), highlight=False)

    def _width(self) -> int:
        # One column spare: some terminals wrap as soon as the last column is written.
        return max(self.console.width - 1, 1)

    def _render(self) -> str:
        if self._progress is None:
            return self._label[: self._width()]
        label = None if self._label == phase_heading("training") else self._label
        return progress_line(self._progress, self._width(), label=label, ascii_only=self._ascii)

    def _draw(self) -> None:
        if not self.live:
            return
        text = self._render()
        if text != self._shown:
            self._write("\r" + text + "\x1b[K")
            self._shown = text

    def _write(self, raw: str) -> None:
        self.console.file.write(raw)
        self.console.file.flush()

    def _line(self, text: str) -> None:
        """A line that stays (an event, a state change), above the live line; long prose wraps at words on
        a terminal, and a path or any other word longer than the width stays whole."""
        if self.live and self._shown:
            self._write("\r\x1b[K")
            self._shown = ""
        lines = textwrap.wrap(
            text, self._width(), subsequent_indent="  ", break_long_words=False, break_on_hyphens=False
        )
        for line in (lines if self.live else [text]) or [""]:
            self.console.print(line, highlight=False, markup=False)
        self._draw()

    def close(self, keep_line: bool = True) -> None:
        """Stop drawing; `keep_line` leaves the live line's last state on screen (a job that stopped)."""
        if self.live and self._shown:
            self._write("\n" if keep_line and self._progress is not None else "\r\x1b[K")
        self._shown = ""
        self.live = False
