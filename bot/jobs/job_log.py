"""The job's own lines from its worker log (train.log), for `/job` and `qlora-bot job N`: the records of
qlora-bot's loggers and their tracebacks, without progress bars, library warnings and library records.
"""

from __future__ import annotations

import re
from pathlib import Path

TAIL_LINES = 15
_TAIL_BYTES = 1 << 20  # progress bars redraw in place and make logs long; the end is what matters
# trainer/training/worker.py main(), bot/logging_setup.py: "%(asctime)s %(levelname)s %(name)s: %(message)s".
_RECORD = re.compile(
    r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) (?P<name>[\w.\-]+): "
)
_OWN_LOGGERS = ("trainer", "bot")  # the worker's and the bot's; everything else is a library talking
_TRACEBACK = "Traceback (most recent call last):"
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")
_EXCEPTION = re.compile(r"[A-Za-z_][\w.]*(?:: .*)?")  # "ValueError: boom", "KeyboardInterrupt"


def job_log_tail(path: Path, lines: int = TAIL_LINES) -> str:
    """The last `lines` of the job's own lines in the log at `path`; "" when there is none (yet)."""
    try:
        with path.open("rb") as log_file:
            start = max(log_file.seek(0, 2) - _TAIL_BYTES, 0)
            log_file.seek(start)
            text = log_file.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    if start:
        text = text.partition("\n")[2]  # the first line read is cut
    return "\n".join(job_lines(text)[-lines:])


def job_lines(text: str) -> list[str]:
    """The lines of `text` that belong to records of qlora-bot's loggers, with the traceback lines that
    continue them, and tracebacks printed outside any record (a worker that crashed before logging)."""
    kept: list[str] = []
    keep = False  # whether the record (or traceback) these lines continue is ours
    inside = False  # whether the previous line was part of a record or traceback
    traceback = False  # whether that record has reached a traceback
    for raw in text.split("\n"):
        bar = "\r" in raw  # a progress bar redraws itself after \r; a record may follow its last draw
        line = raw.rsplit("\r", 1)[-1].rstrip()
        record = _RECORD.search(line)
        if record is not None:
            name = record.group("name")
            keep = any(name == own or name.startswith(own + ".") for own in _OWN_LOGGERS)
            inside, traceback = True, False
            if keep:
                kept.append(line[record.start() :])
            continue
        if bar:
            inside = False
            continue
        if line.startswith(_TRACEBACK) and not inside:
            keep = inside = True  # not part of any record: the worker itself crashed
        if inside and _continues(line, traceback):
            traceback = traceback or line.startswith(_TRACEBACK)
            if keep and line:
                kept.append(line)
            continue
        inside = False
    return kept


def _continues(line: str, traceback: bool) -> bool:
    """Whether `line` can continue a multi-line record: a traceback's lines (indented frames and code,
    chaining messages, the exception) or an indented line. Anything else (a warnings.warn header, a
    library's print) ends it."""
    if line.startswith((" ", "\t", _TRACEBACK, *_CHAINED)):
        return True
    return traceback and (not line or _EXCEPTION.fullmatch(line) is not None)
