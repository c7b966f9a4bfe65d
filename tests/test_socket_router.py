"""The serve worker's socket side without a model: a client that reuses a request id right after its
Finished is answered, though the finished request may still sit in the queue's running batch."""

from __future__ import annotations

import socket
import time

from protocol.serve import Cancel, Failed, Finished, Generate, Ready, decode_event, encode
from trainer.serving.queue import RequestQueue
from trainer.serving.socket_server import Router, SocketServer


def _client_lines(sock: socket.socket):
    buffer = b""
    while True:
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield decode_event(line)
        chunk = sock.recv(65536)
        if not chunk:
            return
        buffer += chunk


def _wait_for(condition, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := condition()) is not None:
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_an_id_reused_after_its_finished_is_queued_while_the_first_batch_winds_down(tmp_path):
    queue, to_stdout = RequestQueue(), []
    router = Router(to_stdout.append)
    server = SocketServer(tmp_path / "serve" / "w.sock", queue, router)
    assert server.start()
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(server.path))
    events = _client_lines(client)
    try:
        assert isinstance(next(events), Ready)
        request = Generate(id="same", base_model="base", prompt="hi", max_new_tokens=4)
        client.sendall((encode(request) + "\n").encode())
        batch = _wait_for(lambda: queue.next_batch(4, 4))  # the engine took it: it is running
        router(Finished(id=batch[0].id, variant="adapter", text="one", tokens=1, seconds=0.1))
        assert next(events) == Finished(id="same", variant="adapter", text="one", tokens=1, seconds=0.1)
        # The client asks again under the same id before the engine has called queue.finished(batch).
        client.sendall((encode(request) + "\n").encode())
        second = _wait_for(lambda: next(iter(router.in_flight()), None))
        assert second != batch[0].id  # a new queue id: it cannot collide with the winding-down one
        queue.finished(batch)
        running = queue.next_batch(4, 4)
        assert [ask.id for ask in running] == [second]
        # Cancel names the client's id and reaches the request now in flight.
        client.sendall((encode(Cancel(id="same")) + "\n").encode())
        assert _wait_for(lambda: running[0].cancel_message) == "cancelled"
        assert batch[0].cancel_message is None  # not the one that had already finished
        assert not any(isinstance(event, Failed) for event in to_stdout)
    finally:
        client.close()
        server.close()
        queue.request_stop()
