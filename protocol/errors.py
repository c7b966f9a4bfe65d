"""The one user-facing error type, raised in every process (its message and hint are shown as they are), and
the error for what breaks the protocol."""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a refusal the person can act on: the message says what is wrong, the hint what to do.
    Anything else raised is a bug, shown only as a reference id."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class ProtocolError(ValueError):
    """A line or spec that does not follow the protocol: a bug or a version mismatch, never the person's."""
