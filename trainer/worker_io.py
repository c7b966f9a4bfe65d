"""What every worker does the same way: the real stdout kept for protocol lines, SIGTERM as cancel, and a
failure turned into what a person reads (kind, message, hint).

Libraries print (tqdm, warnings, C extensions writing to fd 1). A worker moves the real stdout to a private
descriptor and points fd 1 and sys.stdout at stderr, so no stray print can corrupt its protocol stream.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TextIO, TypeVar

from protocol.errors import UserError

Message = TypeVar("Message")

# --- the stdout channel


def reserve_stdout() -> int:
    """A new descriptor for the real stdout; fd 1 and sys.stdout go to stderr (the worker's log) from now."""
    sys.stdout.flush()
    channel = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return channel


def take_stdout() -> TextIO:
    """The real stdout as a line-buffered text stream, reserved for protocol lines (reserve_stdout)."""
    return os.fdopen(reserve_stdout(), "w", encoding="utf-8", buffering=1)


class LineWriter(Generic[Message]):
    """One protocol line per message, flushed at once so the parent sees it at once. Writes are serialised:
    the SIGTERM path and the training loop, or the serve worker's two threads, may both emit.

    Without `on_broken` a failed write raises. With it, the first failed write (the parent is gone: nobody
    will read another line) calls `on_broken(error)` once and every later message is dropped."""

    def __init__(
        self,
        stream: TextIO,
        encode: Callable[[Message], str],
        on_broken: Callable[[OSError], None] | None = None,
    ) -> None:
        self._stream = stream
        self._encode = encode
        self._on_broken = on_broken
        self._lock = threading.Lock()
        self._broken = False

    def __call__(self, message: Message) -> None:
        line = self._encode(message) + "\n"
        with self._lock:
            if self._broken:
                return
            try:
                self._stream.write(line)
                self._stream.flush()
            except OSError as error:
                if self._on_broken is None:
                    raise
                self._broken = True
                self._on_broken(error)


# --- cancellation


class Cancelled(Exception):
    """SIGTERM arrived before training started: nothing to checkpoint yet."""


class CancelFlag:
    """SIGTERM before training raises Cancelled at once; during training it asks for checkpoint + stop:
    cancel is a signal, and it must never lose a finished step."""

    def __init__(self) -> None:
        self.requested = False
        self.training = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        self.requested = True
        if not self.training:
            raise Cancelled()


# --- failures

FailureKind = Literal["user_error", "oom", "internal"]


@dataclass(frozen=True)
class Failure:
    """What a worker reports for an exception: `kind` for the bot, `message` and `hint` for the person."""

    kind: FailureKind
    message: str
    hint: str


def explain_failure(
    error: BaseException,
    log: logging.Logger,
    *,
    oom: tuple[str, str],
    traceback_in: str | Path,
    disk_full_under: str | Path | None = None,
    context: str = "",
) -> Failure:
    """The one reading of a failure for both workers; anything but a UserError logs its traceback first.

    `oom` is the (message, hint) for running out of GPU memory, in the worker's words; `traceback_in` names
    where the log is; `disk_full_under`, where given, reports a full disk as such, naming that folder (a
    job's checkpoints survive it). `context` ends the log line (" answering g-1")."""
    if isinstance(error, UserError):
        return Failure("user_error", error.message, error.hint)
    trace = "".join(traceback.format_exception(error))
    if (
        disk_full_under is not None
        and isinstance(error, OSError)
        and error.errno in (errno.ENOSPC, errno.EDQUOT)
    ):
        log.error("disk full%s:\n%s", context, trace)
        return Failure(
            "internal",
            f"disk full under {disk_full_under}",
            "free space there, then submit the job again (its newest checkpoint is kept)",
        )
    if is_oom(error):
        log.error("out of memory%s:\n%s", context, trace)
        return Failure("oom", *oom)
    log.error("internal error%s:\n%s", context, trace)
    return Failure(
        "internal",
        f"internal error: {type(error).__name__}: {str(error)[:300]}",
        f"the full traceback is in {traceback_in}",
    )


def is_oom(error: BaseException) -> bool:
    """CUDA ran out of memory. torch is looked up, never imported: a worker that has not loaded it yet
    cannot have raised its error, and importing it here would cost seconds on the way out."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(error, torch.OutOfMemoryError):
        return True
    return "CUDA out of memory" in str(error)


def job_relative(text: str, job_dir: str | Path) -> str:
    """`text` with every path inside the job folder written relative to it ("upload/dataset.jsonl"): a
    worker's messages reach Discord, which never shows server paths. The folder itself is left as it is
    (the terminal shows it; Discord renders it as "the job folder")."""
    folders = {str(job_dir).rstrip("/"), str(Path(job_dir).resolve())} - {"", "."}
    for folder in sorted(folders, key=len, reverse=True):  # the longer first: one may contain the other
        text = text.replace(folder + "/", "")
    return text


# --- library noise in the log

# Redrawn progress bars (loading weights, writing shards, mapping datasets) bury the log in \r-lines; the
# job's own events already report each phase. Defaults only: a person who sets them keeps their choice.
QUIET_ENV = {"HF_HUB_DISABLE_PROGRESS_BARS": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"}
# Records nobody running a job can act on, by (logger name prefix, text in the message, only while the Hub is
# offline). Everything else, warnings included, reaches the log as it was written.
KNOWN_NOISE = (
    # transformers 5 deprecated the name; peft and trl still call it on every model they wrap.
    ("py.warnings", "`is_gradient_checkpointing` is deprecated", False),
    # Offline (the worker's default), bitsandbytes cannot fetch its CPU kernel from the Hub and falls back
    # to its own; transformers likewise for the kernels it looks up there. Online, a failure is real.
    ("bitsandbytes", "kernels-community", True),
    ("transformers", "Failed to load kernel", True),
    # trl 1.16 deprecates use_liger_kernel in favour of kernels fetched from the Hub at run time; a worker
    # runs offline by design, so liger-kernel (installed, no download) is the fused path it can have.
    ("py.warnings", "`use_liger_kernel=True` is deprecated", False),
    # liger-kernel 0.8.5 probes its backends for other hardware (CuTe DSL, Ascend) on import, warning
    # for each one absent; the CUDA/Triton kernels it then uses are unaffected (seen on the H200).
    ("liger_kernel.backends.registry", "could not be imported", False),
)


class KnownNoise(logging.Filter):
    """Drops the records of KNOWN_NOISE; a handler filter, so it sees every logger's records."""

    def __init__(self, offline: bool) -> None:
        super().__init__()
        self.offline = offline

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(
            record.name.startswith(logger) and text in message and (self.offline or not offline_only)
            for logger, text, offline_only in KNOWN_NOISE
        )


def quiet_libraries() -> None:
    """Call once logging is configured and before any library is imported: sets QUIET_ENV, routes Python
    warnings into the log (timestamped, like every other line) and drops KNOWN_NOISE there."""
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    logging.captureWarnings(True)
    offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in {"1", "ON", "YES", "TRUE"}
    for handler in logging.getLogger().handlers:
        handler.addFilter(KnownNoise(offline))


def log_through_root() -> None:
    """transformers logs through a handler of its own (no timestamp, beside our filter): once it is imported,
    its records go through the root logger's handler like every other library's."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_default_handler()
    transformers_logging.enable_propagation()
