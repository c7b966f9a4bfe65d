"""The worker's error vocabulary: a UserError is the person's to fix; everything else is ours."""

from __future__ import annotations

from pathlib import Path


class UserError(Exception):
    """Bad input that the person who started the job can fix: the message says what, the hint how."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class Cancelled(Exception):
    """SIGTERM arrived before training started: nothing to checkpoint yet."""


class AlreadyTrained(Exception):
    """The checkpoint a job resumes from is at (or past) the job's last step: there is nothing to train.

    Raised from the trainer's on_train_begin, where the Trainer has loaded the checkpoint: left to run,
    transformers would train one step past max_steps before it checks the limit."""

    def __init__(self, step: int, max_steps: int) -> None:
        super().__init__(f"the checkpoint is at step {step} of {max_steps}")
        self.step = step
        self.max_steps = max_steps


def job_relative(text: str, job_dir: str | Path) -> str:
    """`text` with every path inside the job folder written relative to it ("upload/dataset.jsonl"): a
    worker's messages reach Discord, which never shows server paths. The folder itself is left as it is
    (the terminal shows it; Discord renders it as "the job folder")."""
    folders = {str(job_dir).rstrip("/"), str(Path(job_dir).resolve())} - {"", "."}
    for folder in sorted(folders, key=len, reverse=True):  # the longer first: one may contain the other
        text = text.replace(folder + "/", "")
    return text
