"""The serve worker: `python -m trainer.serving.worker` answers Generate requests from stdin with events on
stdout.

Long-lived. A reader thread takes request lines from stdin; the main thread loads models and runs
batches. Stdout carries serve-protocol lines only (logs go to stderr); EOF, Shutdown or SIGTERM end it.
With --socket it also serves local clients on a Unix socket (socket_server.py); --detached leaves stdin
alone (a worker `qlora-bot ask` started for later asks too) and stops after --idle-timeout-s.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from protocol.serve import (
    STOPPED_IDLE,
    Cancel,
    Failed,
    Generate,
    Ready,
    ServeProtocolError,
    decode_request,
    encode,
)
from trainer.data.chat_template import RENDER_TIMEOUT_S  # stdlib only: the template child starts on first use
from trainer.serving.queue import Ask, RequestQueue
from trainer.serving.socket_server import Router, SocketServer
from trainer.worker_io import LineWriter, take_stdout

# Named after the worker rather than this module, as its log lines have always been.
log = logging.getLogger("trainer.serve")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m trainer.serving.worker", description=__doc__)
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
    parser.add_argument("--socket", type=Path, help="also serve local clients on this Unix socket (0600)")
    parser.add_argument(
        "--idle-timeout-s",
        type=_positive(float),
        help="with --socket: stop after this many seconds with no request and no client connected",
    )
    parser.add_argument(
        "--detached", action="store_true", help="serve the socket only: no requests on stdin (EOF is no stop)"
    )
    args = parser.parse_args(argv)
    if args.detached and (args.socket is None or args.idle_timeout_s is None):
        parser.error("--detached needs --socket and --idle-timeout-s (else nothing could ever stop it)")
    return args


def main(argv: list[str] | None = None) -> int:
    stream = take_stdout()
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    args = parse_args(argv)
    queue = RequestQueue()

    def stop(error: OSError) -> None:  # the bot is gone: nobody will read another answer
        log.warning("stdout closed (%s): stopping", error)
        queue.request_stop()

    # Every event goes through the router: a socket client's back to its connection, the rest to stdout.
    emit = Router(LineWriter(stream, encode, on_broken=stop))
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
    server = None
    if args.socket is not None:  # bound once the engine is built: a client that connects gets answers
        server = SocketServer(args.socket, queue, emit, idle_timeout_s=args.idle_timeout_s)
        if not server.start():
            if args.detached:  # another worker serves this socket, and nobody else can reach this one
                log.info("serve worker stopped: another one already serves %s", args.socket)
                return 0
            server.watch_idle()  # its parent's asks alone; its parent left the idle stop to it
    emit(Ready(pid=os.getpid()))
    if not args.detached:
        reader = threading.Thread(target=read_requests, args=(0, queue, emit), name="stdin", daemon=True)
        reader.start()
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
    idle = server is not None and server.stopped_idle  # then whatever came after that: ask it again
    for ask in queue.drain():
        why = STOPPED_IDLE if idle else "cancelled: the serve worker shut down before it"
        emit(Failed(id=ask.id, kind="cancelled", message=why))
    if server is not None:
        server.close()
    log.info("serve worker stopped")
    return 0


def read_requests(fd: int, queue: RequestQueue, emit: Router) -> None:
    """The reader thread: queue Generate, apply Cancel; Shutdown or EOF stops the worker."""
    for line in _lines(fd):
        try:
            request = decode_request(line)
        except ServeProtocolError as error:
            # Without an id no event can answer it; the bot never sends such lines, so the log is enough.
            log.error("ignored a request line that is not serve protocol: %s", error)
            continue
        if isinstance(request, Generate):
            if emit.register(request, None) is None:
                log.error("ignored a second request with id %s while the first is not answered", request.id)
            elif not queue.submit(Ask(request)):
                emit.forget(request.id)
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
