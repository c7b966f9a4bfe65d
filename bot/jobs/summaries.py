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


def clock(seconds: float | None) -> str:
    """A duration the way a terminal line counts it down: 4:05, 1:02:03 (no padding, never a unit)."""
    if seconds is None:
        return "?"
    seconds = max(round(seconds), 0)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def compact_count(value: float) -> str:
    """850, 5.8k, 12.3k, 123k, 1.2M: three significant figures at most, so a rate never grows the line."""
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            scaled = value / limit
            return f"{scaled:.1f}{suffix}" if scaled < 100 else f"{scaled:.0f}{suffix}"
    return f"{value:.0f}"


def in_line(position: int) -> str:
    """A queue position as a person says it: next in line, 2nd in line, 11th in line."""
    if position <= 1:
        return "next in line"
    suffix = "th" if 10 <= position % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(position % 10, "th")
    return f"{position}{suffix} in line"


def about(seconds: float) -> str:
    """An expected wait, rounded as an estimate deserves: under a minute, about 6 min, about 1 h 20 min."""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "under a minute"
    hours, minutes = divmod(minutes, 60)
    if not hours:
        return f"about {minutes} min"
    return f"about {hours} h {minutes} min" if minutes else f"about {hours} h"


def waiting_for(slot_kind: str, slot_count: int, running_ids: list[int], own_limit: int | None) -> str:
    """What a queued job waits for. `slot_kind` is "CPU" or "GPU"; `own_limit` is set when a slot is free
    but its owner already runs as many jobs as one person may."""
    if own_limit is not None:
        return f"waiting for your running job to finish (at most {own_limit} running per person)"
    if not running_ids:
        return "starting"
    if slot_count == 1:
        return f"waiting for the {slot_kind} slot (job {running_ids[0]} is running)"
    return f"waiting for a free {slot_kind} slot"
