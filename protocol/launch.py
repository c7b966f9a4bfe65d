"""Where one attempt of a job runs, handed to a worker on its command line at launch (never in the spec):

    python -m trainer.training.worker SPEC.json --job-dir DIR [--cache-dir DIR] [--resume-checkpoint CKPT]
    python -m trainer.data.check SPEC.json DOWNLOAD_DIR [MEMORY_MB] --job-dir DIR

The spec says what the person asked for; the folder, the cache and the checkpoint this attempt continues
are the bot's choice for this attempt (the next one may resume from a newer checkpoint).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import ProtocolError

_OPTIONS = {"--job-dir": "job_dir", "--cache-dir": "cache_dir", "--resume-checkpoint": "resume_checkpoint"}


@dataclass(frozen=True)
class Launch:
    # The job folder: the worker runs in it, reads an upload from it and writes only under it.
    job_dir: str
    cache_dir: str | None = None  # derived data shared between jobs (tokenized datasets); None: no cache
    resume_checkpoint: str | None = None  # the checkpoint this attempt continues; None: from the start

    def argv(self) -> list[str]:
        """The options that hand this launch to a worker."""
        args = []
        for option, name in _OPTIONS.items():
            value = getattr(self, name)
            if value is not None:
                args += [option, value]
        return args


def parse_launch(argv: Sequence[str]) -> tuple[Launch, list[str]]:
    """The launch in a worker's arguments, and the other (positional) arguments in their order."""
    values: dict[str, str] = {}
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith("--"):
            rest.append(arg)
            continue
        if arg not in _OPTIONS:
            raise ProtocolError(f"unknown worker option {arg} (known: {', '.join(_OPTIONS)})")
        value = next(args, None)
        if value is None:
            raise ProtocolError(f"the worker option {arg} needs a value")
        values[_OPTIONS[arg]] = value
    if "job_dir" not in values:
        raise ProtocolError("the worker needs --job-dir")
    return Launch(**values), rest
