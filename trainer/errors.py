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
