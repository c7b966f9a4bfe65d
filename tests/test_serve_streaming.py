"""trainer/serving/streaming.py: text pieces that never split a character, and the decode loop that queues
each step before reading the previous step's tokens, without a step too many at the end."""

from __future__ import annotations

from tests.tiny_model import build_tokenizer


class ScriptedSession:
    """A decoder session whose rows answer from a script (row r says script[r][s] at step s); it logs each
    step with the rows it was asked to advance."""

    def __init__(self, script: list[list[int]], vocab: int, log: list) -> None:
        self.script, self.vocab, self.log, self.steps = script, vocab, log, 0
        self.logits = self._logits()

    def step(self, tokens, active):
        self.log.append(("step", list(active)))
        self.steps += 1
        self.logits = self._logits()
        return self.logits

    def _logits(self):
        import torch

        logits = torch.zeros(len(self.script), self.vocab)
        for row, answer in enumerate(self.script):
            logits[row, answer[min(self.steps, len(answer) - 1)]] = 1.0
        return logits


def _run(script: list[list[int]], stops: list[frozenset[int]], limits: list[int]):
    import torch

    from trainer.serving.sampling import RowSampler
    from trainer.serving.streaming import IncrementalDecoder, RowState, run_rows

    tokenizer = build_tokenizer()
    log: list = []
    session = ScriptedSession(script, len(tokenizer), log)
    rows = [
        RowState(IncrementalDecoder(tokenizer), stop, limit, lambda: None)
        for stop, limit in zip(stops, limits, strict=True)
    ]
    samplers = [RowSampler(0.0, 1.0, None, torch.device("cpu")) for _ in rows]
    run_rows(
        session,
        rows,
        samplers,
        lambda i, text: log.append(("text", i, text)),
        lambda i: log.append(("end", i)),
    )
    return rows, log


def test_after_the_first_token_each_step_is_queued_before_the_previous_one_is_read_none_after_the_last():
    tokenizer = build_tokenizer()
    letters = [tokenizer.convert_tokens_to_ids(letter) for letter in "abcd"]
    rows, log = _run([letters], [frozenset()], [4])
    assert log == [
        ("text", 0, "a"), ("step", [True]),  # the first token streams at once
        ("step", [True]), ("text", 0, "b"),
        ("step", [True]), ("text", 0, "c"),
        ("text", 0, "d"), ("end", 0),
    ]  # fmt: skip
    assert (rows[0].stop_reason, rows[0].tokens, rows[0].decoder.text) == ("length", 4, "abcd")


def test_a_row_stopped_by_its_stop_token_takes_one_step_too_many_and_none_after():
    tokenizer = build_tokenizer()
    a, b, stop = (tokenizer.convert_tokens_to_ids(token) for token in ("a", "b", "<|im_end|>"))
    rows, log = _run([[a, a, stop, a, a], [b] * 5], [frozenset({stop}), frozenset()], [10, 5])
    steps = [entry[1] for entry in log if entry[0] == "step"]
    # Read while the third step was already queued: the first row's stop token; four steps for five tokens.
    assert steps == [[True, True], [True, True], [True, True], [False, True]]
    assert (rows[0].stop_reason, rows[0].decoder.text) == ("eos", "aa")
    assert (rows[1].stop_reason, rows[1].decoder.text) == ("length", "bbbbb")
    assert [entry for entry in log if entry[0] == "end"] == [("end", 0), ("end", 1)]


def test_incremental_decoding_never_splits_a_character():
    from trainer.serving.streaming import IncrementalDecoder

    tokenizer = build_tokenizer()
    text = "héllo wörld ✓ 你好 — fine"
    decoder = IncrementalDecoder(tokenizer)
    pieces = [decoder.push(token) for token in tokenizer(text, add_special_tokens=False).input_ids]
    pieces.append(decoder.finish())
    assert "".join(pieces) == decoder.text == text
    assert not any("\ufffd" in piece for piece in pieces)
