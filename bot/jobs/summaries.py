"""What Discord and the terminal both show of a job, worded once: durations, the phases, the wait in the
queue, the step and loss so far. Each front end lays these out in its own way (embeds, lines)."""

from __future__ import annotations

from protocol.events import Progress

# Each phase as a heading (the terminal's progress bar and event lines) and inside a sentence
# (Discord's "running: ..."), in the order a job goes through them.
PHASES: dict[str, tuple[str, str]] = {
    "validating": ("Validating dataset", "validating the dataset"),
    "loading_model": ("Loading model", "loading the model"),
    "tokenizing": ("Packing tokens", "packing tokens"),
    "training": ("Training", "training"),
    "saving": ("Saving adapter", "saving the adapter"),
}


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60:02d}:{rest % 60:02d}"


def phase_heading(phase: str) -> str:
    return PHASES[phase][0]


def phase_in_sentence(phase: str | None, otherwise: str = "starting") -> str:
    return PHASES[phase][1] if phase in PHASES else otherwise


def starts_in(eta_s: float | None) -> str:
    """A queued job's expected wait."""
    return f"starts in ~{format_duration(eta_s)}"


def step_and_loss(progress: Progress) -> str:
    loss = f", loss {progress.loss:.4f}" if progress.loss is not None else ""
    return f"step {progress.step}/{progress.total_steps}{loss}"


def clipped(text: str, limit: int) -> str:
    """The first line of `text` in at most `limit` characters, an ellipsis marking a cut."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def why_it_ended(state: str, error_kind: str | None, error_message: str | None, limit: int = 60) -> str:
    """A failed job's reason in a list's column ("oom: CUDA out of memory at step 3"), a cancel's when it
    was not a plain cancel (a time limit); "" for the others. The whole text is in the job's details."""
    if state == "failed" and error_message:
        return clipped(f"{error_kind}: {error_message}" if error_kind else error_message, limit)
    if state == "cancelled" and error_message and error_message != "cancelled":
        return clipped(error_message, limit)
    return ""
