"""The worker's event channel: the real stdout carries protocol lines and nothing else.

Libraries print (tqdm, warnings, C extensions writing to fd 1). We move the real stdout to a private
descriptor and point fd 1 and sys.stdout at stderr, so no stray print can corrupt the event stream.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import TextIO

from protocol.events import Event, encode_event


class EventWriter:
    """Writes one protocol line per event and flushes, so the parent sees it at once."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()  # the SIGTERM path and the training loop may both emit

    def __call__(self, event: Event) -> None:
        line = encode_event(event) + "\n"
        with self._lock:
            self._stream.write(line)
            self._stream.flush()


def take_stdout_for_events() -> EventWriter:
    """Reserve the process's stdout for events; everything else printed goes to stderr from now on."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return EventWriter(os.fdopen(events_fd, "w", encoding="utf-8", buffering=1))
