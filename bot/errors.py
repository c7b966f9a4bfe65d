"""The one error type whose message is shown to people as is; anything else is a bug with a reference id."""

from __future__ import annotations


class UserFacingError(Exception):
    """Refusals and bad input: the message says what is wrong, the hint what to do about it."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message
