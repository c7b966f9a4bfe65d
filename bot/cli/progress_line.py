"""The one live line `qlora-bot train` keeps at the bottom of a terminal, laid out for a given width: whole
fields only (a number is never cut), the less important ones dropped first as the terminal narrows."""

from __future__ import annotations

from collections.abc import Sequence

from bot.jobs.summaries import clock, compact_count
from protocol.events import Progress

SEPARATOR = "  "
BAR_MIN, BAR_MAX = 10, 40
UNICODE_BAR, ASCII_BAR = ("━", "─"), ("#", "-")


def fit(fields: Sequence[tuple[int, str]], width: int) -> list[int]:
    """Which fields (index into `fields`) fit in `width` when taken by priority (lower number first) and
    shown in their given order; a field that does not fit whole is left out, never shortened."""
    chosen: set[int] = set()
    used = 0
    for index in sorted(range(len(fields)), key=lambda i: fields[i][0]):
        extra = len(fields[index][1]) + (len(SEPARATOR) if chosen else 0)
        if used + extra <= width:
            chosen.add(index)
            used += extra
    return sorted(chosen)


def progress_fields(event: Progress) -> dict[str, str]:
    fields = {"step": f"step {event.step}/{event.total_steps}"}
    if event.loss is not None:
        fields["loss"] = f"loss {event.loss:.4f}"
    fields["rate"] = f"{compact_count(event.tokens_per_s)} tok/s"
    fields["eta"] = f"ETA {clock(event.eta_s)}"
    fields["epoch"] = f"epoch {event.epoch:.2f}"
    if event.gpu_mem_gib is not None:
        fields["memory"] = f"{event.gpu_mem_gib:.1f} GiB"
    return fields


# What survives a narrow terminal first (lower is kept longer), and the order fields read in.
PRIORITY = {"step": 0, "loss": 1, "eta": 2, "rate": 3, "bar": 4, "label": 5, "memory": 6, "epoch": 7}
ORDER = ("label", "bar", "step", "loss", "rate", "eta", "epoch", "memory")


def progress_line(
    event: Progress, width: int, label: str | None = None, bar: bool = True, ascii_only: bool = False
) -> str:
    """`label` names the phase when it is not plain training (e.g. "Saving adapter" after the last step)."""
    fields = progress_fields(event)
    if label:
        fields["label"] = label
    if bar:
        fields["bar"] = "x" * BAR_MIN  # a placeholder of the smallest width; grown below
    names = [name for name in ORDER if name in fields]
    kept = [names[i] for i in fit([(PRIORITY[name], fields[name]) for name in names], width)]
    if "bar" in kept:
        spare = width - len(SEPARATOR.join(fields[name] for name in kept))
        fields["bar"] = draw_bar(event.step, event.total_steps, min(BAR_MIN + spare, BAR_MAX), ascii_only)
    return SEPARATOR.join(fields[name] for name in kept)


def draw_bar(done: int, total: int, width: int, ascii_only: bool = False) -> str:
    full, empty = ASCII_BAR if ascii_only else UNICODE_BAR
    filled = round(width * min(done / total, 1.0)) if total > 0 else 0
    return full * filled + empty * (width - filled)


def waiting_line(position: str, wait: str | None, reason: str, width: int) -> str:
    """ "queued: 2nd in line, about 6 min, waiting for a free CPU slot"; when the width is short the reason
    goes first, then the estimate. `wait` is None when the job starts now."""
    fields = [(0, f"queued: {position}"), (1, wait or ""), (2, reason)]
    fields = [field for field in fields if field[1]]
    # ", " is as wide as SEPARATOR, so fit() measures these too.
    return ", ".join(fields[i][1] for i in fit(fields, width))
