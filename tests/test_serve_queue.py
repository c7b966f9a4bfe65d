"""trainer.serving.queue: which waiting requests make up the next batch, and cancelling waiting or running
ones (the engine that answers them: tests/test_serve_worker.py)."""

from __future__ import annotations

from protocol.serve import Generate


def test_a_batch_is_the_oldest_request_and_later_ones_that_fit():
    from trainer.serving.queue import Ask, RequestQueue

    queue = RequestQueue()
    requests = [
        Generate(id="1", base_model="m", adapter="a", prompt="x", compare=True),  # 2 rows
        Generate(id="2", base_model="other", prompt="x"),  # another base model
        Generate(id="3", base_model="m", prompt="x", temperature=0.7),  # sampled rows join greedy ones
        Generate(id="4", base_model="m", adapter="b", prompt="x"),
        Generate(id="5", base_model="m", adapter="c", prompt="x"),  # a third adapter: too many
        Generate(id="6", base_model="m", adapter="b", prompt="x", compare=True),  # 2 more rows: too many
        Generate(id="7", base_model="m", prompt="x"),
        Generate(id="8", base_model="m", adapter="d", prompt="x"),
    ]
    for request in requests:
        assert queue.submit(Ask(request))
    assert not queue.submit(Ask(requests[0]))  # an id that is already waiting
    batch = queue.next_batch(max_rows=5, max_adapters=2)
    assert [ask.id for ask in batch] == ["1", "3", "4", "7"]
    assert queue.cancel("2", "cancelled").id == "2" and queue.cancel("1", "cancelled") is None
    assert batch[0].cancel_message == "cancelled"  # running: flagged, stops at the next step
    assert [ask.id for ask in queue.next_batch(max_rows=5, max_adapters=2)] == ["5", "6"]
    queue.request_stop()
    assert queue.next_batch(max_rows=5, max_adapters=2) is None
    assert [ask.id for ask in queue.drain()] == ["8"]
