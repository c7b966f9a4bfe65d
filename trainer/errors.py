"""The worker's error vocabulary: a UserError is the person's to fix; everything else is ours."""

from __future__ import annotations


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
