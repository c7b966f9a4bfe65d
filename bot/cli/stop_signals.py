"""How `qlora-bot train` stops: Ctrl-C, SIGTERM and SIGHUP each cancel the job at a checkpoint.

A CLI that dies on SIGTERM (what `timeout`, systemd and `kill` send) or SIGHUP (a closed terminal)
would leave its worker training with nobody watching; so every one of them is handled like Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Callable

from rich.console import Console


class StopSignals:
    """The first stop signal calls `on_first` (cancel at a checkpoint), a second one `on_second` (kill).

    After SIGHUP the terminal is gone: output is dropped instead of failing the shutdown with
    EIO."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self, console: Console) -> None:
        self.console = console
        self.received: list[int] = []
        self.on_first: Callable[[], None] | None = None
        self.on_second: Callable[[], None] | None = None

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            loop.add_signal_handler(signum, self._received, signum)

    def remove(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in self.SIGNALS:
            loop.remove_signal_handler(signum)

    def exit_code(self, code: int, *, cancelled_code: int) -> int:
        """For a job cancelled by SIGTERM or SIGHUP, 128 + that signal (what shells and supervisors
        expect); Ctrl-C keeps `cancelled_code` (130)."""
        if code == cancelled_code and self.received and self.received[0] != signal.SIGINT:
            return 128 + self.received[0]
        return code

    def _received(self, signum: int) -> None:
        self.received.append(signum)
        if signum == signal.SIGHUP:
            _drop_terminal_output(self.console)
        if len(self.received) == 1:
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            with contextlib.suppress(OSError):
                self.console.print(
                    f"\n{name}: cancelling: the worker saves a checkpoint first (Ctrl-C again kills it)",
                    highlight=False,
                )
            if self.on_first is not None:
                self.on_first()
        elif self.on_second is not None:
            self.on_second()


def _drop_terminal_output(console: Console) -> None:
    devnull = open(os.devnull, "w")  # noqa: SIM115 - stands in for the dead terminal until exit
    console.file = devnull
    sys.stdout = sys.stderr = devnull
