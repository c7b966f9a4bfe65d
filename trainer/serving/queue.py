"""Waiting and running requests, shared by the stdin reader thread and the generation loop, and batching.

Stdlib only. The reader submits and cancels; the generation loop takes batches. A batch is the oldest
waiting request plus every later waiting request that can share its `generate` call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass, field

from protocol.serve import Generate

WAIT_SLICE_S = 0.1  # how often a waiting loop looks at the stop flag (a signal handler cannot notify)


@dataclass(eq=False)
class Ask:
    """One Generate request and what has happened to it."""

    request: Generate
    received_at: float = field(default_factory=time.monotonic)
    cancel_message: str | None = None  # set (once) by Cancel or shutdown
    closed: bool = False  # its Failed was sent, or all of its rows finished

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def rows(self) -> int:
        return 2 if self.request.compare else 1

    @property
    def timed_out(self) -> bool:
        # The clock starts when the worker reads the request: queueing and loading count, as the person
        # waiting sees it.
        return time.monotonic() - self.received_at > self.request.timeout_s


def batch_key(request: Generate) -> Hashable:
    """Requests with equal keys can share one decoding session: the same base model. Greedy and sampled
    rows mix freely: each row samples with its own temperature, top_p and seeded generator."""
    return request.base_model


class RequestQueue:
    def __init__(self) -> None:
        self._lock = threading.Condition()
        self._waiting: list[Ask] = []
        self._running: dict[str, Ask] = {}
        self.stopping = threading.Event()  # set from a signal handler too: never take the lock for it

    def submit(self, ask: Ask) -> bool:
        """Queue a request; False (and nothing queued) when its id is already waiting or running."""
        with self._lock:
            if ask.id in self._running or any(other.id == ask.id for other in self._waiting):
                return False
            self._waiting.append(ask)
            self._lock.notify_all()
            return True

    def cancel(self, request_id: str, message: str) -> Ask | None:
        """Cancel a request. Returns it when it was still waiting (removed: the caller reports it); a
        running one is only flagged, and its rows stop at the next generation step."""
        with self._lock:
            for index, ask in enumerate(self._waiting):
                if ask.id == request_id:
                    del self._waiting[index]
                    ask.cancel_message = message
                    return ask
            running = self._running.get(request_id)
            if running is not None and running.cancel_message is None:
                running.cancel_message = message
            return None

    def next_batch(self, max_rows: int, max_adapters: int) -> list[Ask] | None:
        """Block until requests wait, then take a batch of them; None once the worker is stopping."""
        with self._lock:
            while not self._waiting and not self.stopping.is_set():
                self._lock.wait(WAIT_SLICE_S)
            if self.stopping.is_set():
                return None
            batch = _pick(self._waiting, max_rows, max_adapters)
            self._waiting = [ask for ask in self._waiting if ask not in batch]
            self._running.update((ask.id, ask) for ask in batch)
            return batch

    def finished(self, batch: list[Ask]) -> None:
        with self._lock:
            for ask in batch:
                self._running.pop(ask.id, None)

    def request_stop(self) -> None:
        """Stop taking batches; running rows see `stopping` at their next step. Safe in a signal handler."""
        self.stopping.set()

    def drain(self) -> list[Ask]:
        """The requests that never started, taken out of the queue (at shutdown)."""
        with self._lock:
            left, self._waiting = self._waiting, []
            return left


def _pick(waiting: list[Ask], max_rows: int, max_adapters: int) -> list[Ask]:
    first = waiting[0]
    key = batch_key(first.request)
    batch, rows = [first], first.rows  # the oldest always goes, even when its rows exceed max_rows alone
    adapters = {first.request.adapter} - {None}
    for ask in waiting[1:]:
        if batch_key(ask.request) != key or rows + ask.rows > max_rows:
            continue  # a later, smaller or compatible request may still fit
        wanted = adapters | ({ask.request.adapter} - {None})
        if len(wanted) > max_adapters:
            continue  # every adapter of a batch must be resident at once
        batch.append(ask)
        rows += ask.rows
        adapters = wanted
    return batch
