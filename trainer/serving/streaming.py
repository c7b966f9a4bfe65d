"""Decode a batch row by row: when each row stops, and its text as it arrives.

`run_rows` drives a decoder session one step at a time; each batch row has its own `RowState`, so rows of
one batch stop independently (stop token, length, cancel, timeout) while the others go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from trainer.serving.decoders import Session
from trainer.serving.sampling import RowSampler, next_tokens

StopReason = Literal["eos", "length", "cancelled", "timeout"]


class IncrementalDecoder:
    """Text of a growing list of token ids, emitted as suffixes that never need to be taken back.

    Decoding tokens one by one breaks multi-byte characters (byte-level BPE) and drops the leading space
    of SentencePiece pieces. Like text-generation-inference, we decode a small window twice (the last
    emitted tokens, then the same with the new ones) and emit the difference, holding it back while it ends
    in U+FFFD (a character whose remaining bytes have not been generated yet).
    """

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""  # everything emitted so far
        self._prefix = 0  # window start: context that makes the next piece decode as it will in the whole
        self._read = 0  # ids before this index are already part of `text`

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        after = self._decode(self.ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        piece = after[len(before) :]
        self._prefix, self._read = self._read, len(self.ids)
        self.text += piece
        return piece

    def finish(self) -> str:
        """The text still held back; afterwards `text` is the whole answer."""
        whole = self._decode(self.ids)
        # Emitted text cannot be taken back: when a tokenizer decodes the whole differently from its
        # pieces, the stream (and so the answer) keeps what was already shown.
        rest = whole[len(self.text) :] if whole.startswith(self.text) else ""
        self.text += rest
        return rest

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True) if ids else ""


@dataclass(eq=False)
class RowState:
    """One batch row: what stops it, what it has produced, and why it ended."""

    decoder: IncrementalDecoder
    stop_ids: frozenset[int]
    max_new_tokens: int
    interrupted: Callable[[], StopReason | None]  # cancel/timeout of the row's request, asked every step
    stop_reason: StopReason | None = None
    closed: bool = False  # run_rows has reported its end
    tokens: int = 0
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None


def run_rows(
    session: Session,
    rows: Sequence[RowState],
    samplers: Sequence[RowSampler],
    on_text: Callable[[int, str], None],
    on_end: Callable[[int], None],
) -> None:
    """Decode until every row has ended. `on_text(index, text)` gets each non-empty piece of a row's answer;
    `on_end(index)` is called once per row, after its last piece, with its `stop_reason` set.

    A stop token, a cancel or a timeout adds nothing to the answer; a row's last allowed token does.
    After the first token, each step is queued before the previous step's tokens are read on the host.
    """
    tokens = next_tokens(session.logits, samplers)
    _read(rows, tokens.tolist(), on_text, on_end)  # the first token streams at once: the asker waits for it
    if all(row.closed for row in rows):
        return
    tokens = next_tokens(session.step(tokens, [not row.closed for row in rows]), samplers)
    while True:
        chosen = tokens.tolist()  # waits for this step's tokens, not for the next step queued below
        # The next step is queued before the host reads these tokens (detokenizing, streaming), so the GPU
        # decodes while the host works instead of waiting for it. A row whose length ends with this token
        # sits it out. A row that stops at this token for another reason (stop token, cancel, timeout)
        # takes one step too many: its result is never read, and the row, short of its length, stays
        # inside its cache.
        going_on = [not row.closed and row.tokens + 1 < row.max_new_tokens for row in rows]
        following = next_tokens(session.step(tokens, going_on), samplers) if any(going_on) else None
        _read(rows, chosen, on_text, on_end)
        if following is None or all(row.closed for row in rows):
            return  # every row has ended: a row without a following step had its last token now
        tokens = following


def _read(
    rows: Sequence[RowState],
    chosen: list[int],
    on_text: Callable[[int, str], None],
    on_end: Callable[[int], None],
) -> None:
    """Take each open row's token: stop it, or add the token to its answer and stream the new text."""
    now = time.monotonic()
    for index, (row, token) in enumerate(zip(rows, chosen, strict=True)):
        if row.closed:
            continue
        row.stop_reason = row.interrupted()
        if row.stop_reason is None and token in row.stop_ids:
            row.stop_reason = "eos"
        if row.stop_reason is None:
            row.tokens += 1
            if row.first_token_at is None:
                row.first_token_at = now
            piece = row.decoder.push(token)
            if piece:
                on_text(index, piece)
            if row.tokens >= row.max_new_tokens:
                row.stop_reason = "length"
        if row.stop_reason is not None:
            _close(row, index, on_text, on_end)


def _close(
    row: RowState, index: int, on_text: Callable[[int, str], None], on_end: Callable[[int], None]
) -> None:
    row.closed = True
    if row.stop_reason in ("eos", "length"):
        rest = row.decoder.finish()
        if rest:
            on_text(index, rest)
    on_end(index)
