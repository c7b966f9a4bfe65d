"""The serve worker on the tiny 4-bit model: as a subprocess over its pipes, and its engine in-process.

Four workers start first: they import torch (seconds) while this process builds the adapters.
"""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from protocol.serve import Cancel, Failed, Finished, Generate, Loading, Ready, Shutdown, Stats
from tests.serve_helpers import (
    BOMB_TEMPLATE,
    SYSTEM_LINE_TEMPLATE,
    ServeWorker,
    build_adapter,
    build_foreign_adapter,
    cpu_exact,
    ended,
    first_token,
    stop_all,
    with_template,
)

HELLO = ({"role": "user", "content": "Question: what is the capital of France?"},)
LONG = 450  # new tokens: several seconds on CPU, within the tiny model's 512 positions


@pytest.fixture(scope="session", autouse=True)
def workers(tmp_path_factory: pytest.TempPathFactory):
    """Session scope so that they start before the session's tiny model is built (pytest orders by scope)."""
    logs = tmp_path_factory.mktemp("serve-logs")
    started = SimpleNamespace(
        main=ServeWorker(logs / "main.log"),
        small=ServeWorker(logs / "small.log", "--max-adapters", "1", "--max-batch", "2"),
        eof=ServeWorker(logs / "eof.log"),
        bomb=ServeWorker(logs / "bomb.log", "--template-timeout-s", "2"),
    )
    yield started
    stop_all(vars(started).values())


@pytest.fixture(scope="module", autouse=True)
def stop_workers_with_this_module(workers):
    """Session scope is only for the start order: the workers end with this module's tests."""
    yield
    stop_all(vars(workers).values())


@pytest.fixture(scope="module")
def adapters(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("adapters")
    one = build_adapter(tiny_model_dir, root / "one", seed=1)
    two = build_adapter(tiny_model_dir, root / "two", seed=2)
    system = with_template(one, root / "one-system-line", SYSTEM_LINE_TEMPLATE)
    bomb = with_template(one, root / "one-bomb", BOMB_TEMPLATE)
    return SimpleNamespace(
        base=str(tiny_model_dir), one=str(one), two=str(two), system=str(system), bomb=str(bomb)
    )


@pytest.fixture
def worker(workers) -> ServeWorker:
    workers.main.wait_for(lambda events: any(isinstance(e, Ready) for e in events))
    return workers.main


def ask(adapters, request_id: str, adapter: str | None = None, **settings) -> Generate:
    fields = {"messages": HELLO, "max_new_tokens": 16} | settings
    return Generate(id=request_id, base_model=adapters.base, adapter=adapter, **fields)


# --- the worker process


def test_ready_is_the_first_event(workers):
    workers.main.wait_for(lambda events: len(events) > 0)
    assert isinstance(workers.main.events[0], Ready)
    assert workers.main.events[0].pid == workers.main.process.pid


def test_adapters_change_greedy_answers(worker, adapters):
    out = worker.ask(
        ask(adapters, "g-base"), ask(adapters, "g-one", adapters.one), ask(adapters, "g-two", adapters.two)
    )
    base, one, two = out["g-base"].text("base"), out["g-one"].text(), out["g-two"].text()
    assert len({base, one, two}) == 3
    assert out["g-one"].finished["adapter"].tokens == 16
    assert out["g-one"].finished["adapter"].stop_reason == "length"
    for outcome, variant in ((out["g-base"], "base"), (out["g-one"], "adapter")):
        assert outcome.streamed(variant) == outcome.text(variant)  # the Tokens add up to the answer
    again = worker.ask(ask(adapters, "g-one-again", adapters.one))["g-one-again"]
    assert again.loading == []  # the adapter stayed loaded
    twice = worker.ask(ask(adapters, "g-one-twice", adapters.one))["g-one-twice"]
    assert twice.text() == again.text()  # greedy is repeatable
    # Asked alone, as in the batch of three: equal in float32 on the CPU; a GPU's bf16 products differ with
    # the batch shape in the last bits, which can flip a near tie (test_serve_decoding compares logits).
    if not __import__("torch").cuda.is_available():
        assert again.text() == one


@cpu_exact
def test_concurrent_asks_answer_exactly_as_one_by_one(worker, adapters):
    one = worker.ask(ask(adapters, "c1-alone", adapters.one, max_new_tokens=24))["c1-alone"].text()
    two = worker.ask(ask(adapters, "c2-alone", adapters.two, prompt="The quick", messages=None))
    # Both wait behind a blocker, so they surely share one generate() call once it is cancelled.
    worker.send(ask(adapters, "c-blocker", max_new_tokens=LONG))
    worker.wait_for(first_token("c-blocker"))
    together = [
        ask(adapters, "c1", adapters.one, max_new_tokens=24),
        ask(adapters, "c2", adapters.two, prompt="The quick", messages=None),
    ]
    worker.send(*together, Cancel(id="c-blocker"))
    worker.wait_for(lambda events: all(ended(request)(events) for request in together))
    assert worker.outcome("c1").text() == one
    assert worker.outcome("c2").text() == two["c2-alone"].text()


def test_compare_answers_with_adapter_and_base_on_the_same_prompt(worker, adapters):
    out = worker.ask(ask(adapters, "cmp", adapters.two, compare=True), ask(adapters, "cmp-base"))
    compared = out["cmp"]
    assert set(compared.finished) == {"adapter", "base"}
    assert compared.text("base") == out["cmp-base"].text("base")
    assert compared.text("adapter") != compared.text("base")
    assert compared.streamed("base") == compared.text("base")


def test_the_chat_template_saved_with_the_adapter_formats_the_prompt(worker, adapters):
    # Same weights; only the template in the adapter folder differs (it adds a system line).
    out = worker.ask(ask(adapters, "t-default", adapters.one), ask(adapters, "t-system", adapters.system))
    assert out["t-default"].text() != out["t-system"].text()


def test_cancel_stops_one_request_while_its_batch_goes_on(worker, adapters):
    worker.send(ask(adapters, "x-blocker", max_new_tokens=LONG))
    worker.wait_for(first_token("x-blocker"))
    long, short = (
        ask(adapters, "x-long", adapters.one, max_new_tokens=LONG),
        ask(adapters, "x-short", adapters.two),
    )
    worker.send(long, short)
    worker.send(Cancel(id="x-blocker"))
    worker.wait_for(first_token("x-long"))
    worker.send(Cancel(id="x-long"))
    worker.wait_for(lambda events: ended(long)(events) and ended(short)(events))
    for cancelled in ("x-blocker", "x-long"):
        failed = worker.outcome(cancelled).failed
        assert failed is not None and failed.kind == "cancelled"
        assert worker.outcome(cancelled).finished == {}
    alone = worker.ask(ask(adapters, "x-short-alone", adapters.two))["x-short-alone"]
    assert worker.outcome("x-short").text() == alone.text()


def test_timeout_fails_the_request(worker, adapters):
    # 450 tokens take seconds on a CPU but ~0.1 s on a GPU with CUDA graphs: the limit is far below both.
    outcome = worker.ask(ask(adapters, "slow", max_new_tokens=LONG, timeout_s=0.02))["slow"]
    assert outcome.failed is not None and outcome.failed.kind == "timeout"
    assert "longer than 0.02 s" in outcome.failed.message


def test_a_chat_template_bomb_fails_its_request_at_the_deadline_and_the_batch_is_answered(workers, adapters):
    worker = workers.bomb  # --template-timeout-s 2
    # The base model, both adapters and the template child are loaded first (a raw prompt loads the bomb's
    # weights without rendering its template), so the time below is the deadline's alone.
    warm = worker.ask(
        ask(adapters, "warm-two", adapters.two),
        ask(adapters, "warm-bomb", adapters.bomb, prompt="The quick", messages=None),
    )
    boom, fine = ask(adapters, "boom", adapters.bomb), ask(adapters, "fine", adapters.two)
    sent = time.monotonic()
    worker.send(boom, fine)  # one batch: the bomb is planned first, on the thread that generates for both
    worker.wait_for(ended(boom), timeout=60)
    failed_after = time.monotonic() - sent
    worker.wait_for(ended(fine), timeout=60)
    failed = worker.outcome("boom").failed
    assert failed is not None and failed.kind == "user_error"
    assert failed.message == "the adapter's chat template took longer than 2 s to render"
    assert failed.hint and worker.outcome("boom").finished == {}
    assert 2 <= failed_after < 30  # the deadline held: unbounded, this template renders for hours
    assert worker.outcome("fine").text() == warm["warm-two"].text()  # answered, and as it was alone
    again = worker.ask(ask(adapters, "after", adapters.two))["after"]
    assert again.text() == warm["warm-two"].text()  # the worker (and its template child) still serve


def test_bad_input_fails_one_request_and_the_worker_keeps_serving(worker, adapters, tmp_path):
    worker.send_raw(b"this is not json\n")  # logged and ignored: without an id nothing can answer it
    out = worker.ask(
        ask(adapters, "missing", str(tmp_path / "no-such-adapter")),
        ask(adapters, "both", messages=HELLO, prompt="and a prompt"),
        ask(adapters, "fine", adapters.one),
    )
    missing_base = Generate(id="no-base", base_model=str(tmp_path / "no-such-base"), prompt="hi")
    out |= worker.ask(missing_base)
    for request_id, path in (("missing", "no-such-adapter"), ("no-base", "no-such-base")):
        failed = out[request_id].failed
        assert failed.kind == "user_error" and path in failed.message and failed.hint
    assert out["both"].failed.kind == "user_error"
    assert out["fine"].finished["adapter"].tokens == 16


def test_lru_evicts_beyond_max_adapters_and_reloads_on_demand(workers, adapters):
    small = workers.small
    for request_id, adapter in (("l1", adapters.one), ("l2", adapters.two)):
        outcome = small.ask(ask(adapters, request_id, adapter))[request_id]
        assert [event.what for event in outcome.loading][-1] == "adapter"
        assert small.stats()[-1].adapters == (str(Path(adapter).resolve()),)
    back = small.ask(ask(adapters, "l3", adapters.one))["l3"]
    assert back.loading == [Loading(id="l3", what="adapter", name=adapters.one)]  # evicted, so reloaded
    assert small.stats()[-1].adapters == (str(Path(adapters.one).resolve()),)
    assert back.text() == small.outcome("l1").text()


def test_shutdown_exits_zero(workers):
    small = workers.small
    small.send(Shutdown())
    assert small.process.wait(60) == 0


def test_sigterm_cancels_what_runs_and_exits_zero(worker, adapters):
    running = ask(adapters, "term", max_new_tokens=LONG)
    worker.send(running)
    worker.wait_for(first_token("term"))
    worker.process.send_signal(signal.SIGTERM)
    worker.wait_for(ended(running))
    assert worker.outcome("term").failed.kind == "cancelled"
    assert worker.process.wait(60) == 0


def test_end_of_input_cancels_what_runs_and_exits_zero(workers, adapters):
    eof = workers.eof
    running = ask(adapters, "eof", max_new_tokens=LONG)
    eof.send(running)
    eof.wait_for(first_token("eof"))
    assert eof.close() == 0  # closes stdin, as a bot that died would
    assert eof.outcome("eof").failed.kind == "cancelled"


# --- in-process: the engine and its parts


@pytest.fixture(scope="module")
def engine(adapters):
    from trainer.serving.engine import Engine

    events: list = []
    return SimpleNamespace(engine=Engine(events.append, threading.Event()), events=events)


def run_batch(engine, *requests: Generate) -> dict[tuple[str, str], Finished]:
    from trainer.serving.queue import Ask

    start = len(engine.events)
    engine.engine.run_batch([Ask(request) for request in requests])
    emitted = engine.events[start:]
    assert not [event for event in emitted if isinstance(event, Failed)]
    return {(e.id, e.variant): e for e in emitted if isinstance(e, Finished)}


@cpu_exact
def test_one_batch_answers_each_request_exactly_as_alone(engine, adapters):
    requests = [
        ask(adapters, "b1", adapters.one, max_new_tokens=20),
        ask(
            adapters, "b2", adapters.two, prompt="The quick brown fox jumps over", messages=None, compare=True
        ),
        ask(adapters, "b3", max_new_tokens=8, messages=({"role": "user", "content": "hi"},)),
    ]
    alone = {}
    for request in requests:
        alone |= run_batch(engine, request)
    batched = run_batch(engine, *requests)  # 4 rows, 3 prompt lengths (left padding), 3 adapters
    assert len(batched) == 4
    assert {key: (f.text, f.tokens) for key, f in batched.items()} == {
        key: (f.text, f.tokens) for key, f in alone.items()
    }
    assert any(isinstance(e, Stats) for e in engine.events)


def test_answers_end_where_the_model_context_does(engine, adapters):
    from trainer.serving.queue import Ask

    tokenizer = engine.engine.residency.base(adapters.base, lambda: None).tokenizer
    words = "hello world " * 300
    prompt = tokenizer.decode(tokenizer(words, add_special_tokens=False).input_ids[:500])
    finished = run_batch(engine, ask(adapters, "edge", prompt=prompt, messages=None, max_new_tokens=2000))
    prompt_tokens = 1 + len(tokenizer(prompt, add_special_tokens=False).input_ids)  # and BOS
    assert finished["edge", "base"].tokens == 512 - prompt_tokens
    assert finished["edge", "base"].stop_reason == "length"
    start = len(engine.events)
    engine.engine.run_batch([Ask(ask(adapters, "too-long", prompt=words * 2, messages=None))])
    assert [(e.kind, "512" in e.message) for e in engine.events[start:] if isinstance(e, Failed)] == [
        ("user_error", True)
    ]


def test_an_adapter_of_another_model_fails_alone_and_the_base_keeps_answering(adapters, tmp_path):
    from trainer.serving.engine import Engine
    from trainer.serving.queue import Ask

    foreign = build_foreign_adapter(tmp_path / "foreign")
    events: list = []
    fresh = Engine(events.append, threading.Event())  # no adapter yet: the first one wraps the base
    batch = [
        ask(adapters, "f-foreign", str(foreign)),
        ask(adapters, "f-one", adapters.one),
        ask(adapters, "f-base"),
    ]
    fresh.run_batch([Ask(request) for request in batch])
    failed = [e for e in events if isinstance(e, Failed)]
    assert [(e.id, e.kind) for e in failed] == [("f-foreign", "user_error")]
    assert "size mismatch" in failed[0].message
    finished = {e.id: e.text for e in events if isinstance(e, Finished)}
    fresh.run_batch([Ask(ask(adapters, "f-base-again"))])  # the base was reloaded clean, without LoRA layers
    assert finished["f-base"] == [e.text for e in events if isinstance(e, Finished)][-1]
    assert finished["f-one"] != finished["f-base"]


def test_adapters_beyond_the_memory_cap_are_evicted_least_recently_used_first(adapters):
    from trainer.serving.models import Residency

    residency = Residency(max_adapters=8, max_adapter_mb=1.0)
    base = residency.base(adapters.base, lambda: None)
    one = residency.adapter(base, adapters.one, lambda: None)
    two = residency.adapter(base, adapters.two, lambda: None)
    assert residency.evict(base, keep={two.path}) == []  # both fit in 1 MB
    residency.max_adapter_bytes = int(one.nbytes * 1.5)  # room for one: 0.031 MB in float32, half in bf16
    assert residency.evict(base, keep={two.path}) == [one.path]
    assert residency.describe()["adapters"] == (two.path,)
    assert residency.adapter(base, adapters.one, lambda: None).slot == one.slot  # its freed slot again


def test_each_row_stops_at_its_own_stop_token_or_length(engine, adapters):
    import torch

    from trainer.serving.sampling import RowSampler
    from trainer.serving.streaming import IncrementalDecoder, RowState, run_rows

    base = engine.engine.residency.base(adapters.base, lambda: None)
    prompt = [base.tokenizer.bos_token_id, *base.tokenizer("hello world", add_special_tokens=False).input_ids]

    def generate(stops: list[frozenset[int]], limits: list[int]) -> tuple[list[RowState], list[str]]:
        rows = [
            RowState(IncrementalDecoder(base.tokenizer), s, n, lambda: None)
            for s, n in zip(stops, limits, strict=True)
        ]
        pieces, ended = ["", ""], []

        def on_text(index: int, text: str) -> None:
            pieces[index] += text

        samplers = [RowSampler(0.0, 1.0, None, torch.device("cpu"))] * 2
        with torch.inference_mode():
            session = base.decoder.start([prompt, prompt], [None, None], len(prompt) + max(limits))
            run_rows(session, rows, samplers, on_text, ended.append)
        assert sorted(ended) == [0, 1]
        return rows, pieces

    free, _ = generate([frozenset(), frozenset()], [12, 12])
    stop = free[0].decoder.ids[4]
    at = free[0].decoder.ids.index(stop)
    rows, pieces = generate([frozenset({stop}), frozenset()], [12, 7])
    assert (rows[0].stop_reason, rows[0].decoder.ids) == ("eos", free[0].decoder.ids[:at])
    assert (rows[1].stop_reason, rows[1].tokens) == ("length", 7)
    assert rows[1].decoder.ids == free[1].decoder.ids[:7]
    assert pieces == [rows[0].decoder.text, rows[1].decoder.text]


def test_prompts_follow_the_adapter_template_and_stop_at_its_end_of_turn(adapters):
    from transformers import AutoTokenizer

    from trainer.data.chat_template import DEFAULT_CHAT_TEMPLATE
    from trainer.serving.prompts import prompt_ids, stop_ids

    tokenizer = AutoTokenizer.from_pretrained(adapters.system)
    chat = ask(adapters, "p", messages=({"role": "user", "content": "hi"},))
    ids = prompt_ids(tokenizer, tokenizer.chat_template, chat)
    assert tokenizer.decode(ids) == (
        "<s><|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    raw = prompt_ids(tokenizer, tokenizer.chat_template, ask(adapters, "r", prompt="<s>hi", messages=None))
    assert raw.count(tokenizer.bos_token_id) == 1 and raw[0] == tokenizer.bos_token_id
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert stop_ids(tokenizer, tokenizer.chat_template) == {tokenizer.eos_token_id, im_end}
    assert stop_ids(tokenizer, DEFAULT_CHAT_TEMPLATE) == {tokenizer.eos_token_id}
    assert stop_ids(tokenizer, None, [7, 9]) == {tokenizer.eos_token_id, 7, 9}
