"""SIGTERM handling for workers: cancel is a signal, and it must never lose a finished step."""

from __future__ import annotations

import signal
from typing import Any

from trainer.errors import Cancelled


class CancelFlag:
    """SIGTERM before training raises Cancelled at once; during training it asks for checkpoint + stop."""

    def __init__(self) -> None:
        self.requested = False
        self.training = False

    def install(self) -> None:
        signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, _signum: int, _frame: Any) -> None:
        self.requested = True
        if not self.training:
            raise Cancelled()
