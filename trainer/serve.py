"""The serve worker: `python -m trainer.serve` answers Generate requests from stdin with events on stdout.

Long-lived. A reader thread takes request lines from stdin; the main thread loads models and runs
batches. Stdout carries serve-protocol lines only (logs go to stderr); EOF, Shutdown or SIGTERM end it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

from protocol.serve import (
    Cancel,
    Failed,
    Generate,
    Ready,
    ServeEvent,
    ServeProtocolError,
    decode_request,
    encode,
)
from trainer.chat_template import RENDER_TIMEOUT_S  # stdlib only: the template child starts on first use
from trainer.serving.queue import Ask, RequestQueue

log = logging.getLogger("trainer.serve")


class EventWriter:
    """One protocol line per event, flushed at once; both threads emit, so writes are serialised."""

    def __init__(self, stream: TextIO, on_broken: Callable[[], None]) -> None:
        self._stream = stream
        self._lock = threading.Lock()
        self._broken = False
        self._on_broken = on_broken

    def __call__(self, event: ServeEvent) -> None:
        line = encode(event) + "\n"
        with self._lock:
            if self._broken:
                return
            try:
                self._stream.write(line)
                self._stream.flush()
            except OSError as error:  # the bot is gone: nobody will read another answer
                self._broken = True
                log.warning("stdout closed (%s): stopping", error)
                self._on_broken()


def take_stdout() -> TextIO:
    """The real stdout, reserved for events; fd 1 and sys.stdout now go to stderr (trainer.event_stream's
    approach: library prints and C extensions writing to fd 1 cannot corrupt the stream)."""
    sys.stdout.flush()
    events_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return os.fdopen(events_fd, "w", encoding="utf-8", buffering=1)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.serve", description=__doc__)
    parser.add_argument("--max-adapters", type=_positive(int), default=8, help="adapters resident per base")
    parser.add_argument(
        "--max-adapter-mb", type=_positive(float), default=2048.0, help="their parameter memory per base"
    )
    parser.add_argument("--max-batch", type=_positive(int), default=4, help="rows decoded together")
    parser.add_argument(
        "--template-timeout-s",
        type=_positive(float),
        default=RENDER_TIMEOUT_S,
        help="seconds a chat template may take to render one prompt; past it only that request fails",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    stream = take_stdout()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    queue = RequestQueue()
    emit = EventWriter(stream, on_broken=queue.request_stop)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda _signum, _frame: queue.request_stop())

    from trainer.serving.engine import Engine  # torch, transformers: seconds to import

    engine = Engine(
        emit,
        queue.stopping,
        max_adapters=args.max_adapters,
        max_adapter_mb=args.max_adapter_mb,
        template_timeout_s=args.template_timeout_s,
    )
    emit(Ready(pid=os.getpid()))
    threading.Thread(target=read_requests, args=(0, queue, emit), name="stdin-reader", daemon=True).start()
    while (batch := queue.next_batch(args.max_batch, args.max_adapters)) is not None:
        try:
            engine.run_batch(batch)
        except Exception as error:  # run_batch reports its own failures: this is the last line of defence
            log.exception("batch failed")
            for ask in batch:
                if not ask.closed:
                    ask.closed = True
                    emit(Failed(id=ask.id, kind="internal", message=f"internal error: {error!r}"[:300]))
        finally:
            queue.finished(batch)
    for ask in queue.drain():
        emit(Failed(id=ask.id, kind="cancelled", message="cancelled: the serve worker shut down before it"))
    log.info("serve worker stopped")
    return 0


def read_requests(fd: int, queue: RequestQueue, emit: Callable[[ServeEvent], None]) -> None:
    """The reader thread: queue Generate, apply Cancel; Shutdown or EOF stops the worker."""
    for line in _lines(fd):
        try:
            request = decode_request(line)
        except ServeProtocolError as error:
            # Without an id no event can answer it; the bot never sends such lines, so the log is enough.
            log.error("ignored a request line that is not serve protocol: %s", error)
            continue
        if isinstance(request, Generate):
            if not queue.submit(Ask(request)):
                log.error("ignored a second request with id %s while the first is not answered", request.id)
        elif isinstance(request, Cancel):
            waiting = queue.cancel(request.id, "cancelled")
            if waiting is not None:
                waiting.closed = True
                emit(Failed(id=waiting.id, kind="cancelled", message="cancelled before it started"))
        else:
            log.info("shutdown requested")
            break
    queue.request_stop()


def _lines(fd: int) -> Iterator[bytes]:
    # os.read on the descriptor rather than sys.stdin: a daemon thread blocked inside the buffered
    # stdin object holds its lock, and the interpreter can abort on that lock when it exits.
    pending = b""
    while chunk := os.read(fd, 1 << 16):
        *lines, pending = (pending + chunk).split(b"\n")
        yield from (line for line in lines if line.strip())
    if pending.strip():
        yield pending


def _positive(kind: type) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value

    return parse


if __name__ == "__main__":
    sys.exit(main())
