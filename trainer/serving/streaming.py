"""Per-row bookkeeping inside one batched `generate`: when each row stops, and its text as it arrives.

`RowStopper` (a StoppingCriteria) decides, `RowStreamer` (a BaseStreamer) decodes and reports; both share
one `RowState` per batch row, so rows of one batch stop independently (EOS, length, cancel, timeout).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import StoppingCriteria
from transformers.generation.streamers import BaseStreamer

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
    closed: bool = False  # the streamer has reported the end
    tokens: int = 0
    started_at: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None


class RowStopper(StoppingCriteria):
    """Marks rows finished. Runs each step after the new tokens are appended and before they are streamed."""

    def __init__(self, rows: Sequence[RowState], prompt_length: int) -> None:
        self.rows = rows
        self.prompt_length = prompt_length  # the padded length: every row's answer starts there

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        generated = input_ids.shape[1] - self.prompt_length
        last = input_ids[:, -1].tolist()
        for row, token in zip(self.rows, last, strict=True):
            if row.stop_reason is None:
                row.stop_reason = row.interrupted() or _natural_stop(row, token, generated)
        done = [row.stop_reason is not None for row in self.rows]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]


def _natural_stop(row: RowState, token: int, generated: int) -> StopReason | None:
    if token in row.stop_ids:
        return "eos"
    if generated >= row.max_new_tokens:
        return "length"
    return None


class RowStreamer(BaseStreamer):
    """Receives each step's (batch,) new token ids; reports text and ends row by row.

    `on_text(index, text)` gets each non-empty piece, `on_end(index)` is called once per row, after the
    row's last piece, with the row's `stop_reason` set.
    """

    def __init__(
        self,
        rows: Sequence[RowState],
        on_text: Callable[[int, str], None],
        on_end: Callable[[int], None],
    ) -> None:
        self.rows = rows
        self.on_text = on_text
        self.on_end = on_end
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:  # generate() first pushes the whole (batch, prompt) input
            self._prompt_seen = True
            return
        now = time.monotonic()
        for index, (row, token) in enumerate(zip(self.rows, value.reshape(-1).tolist(), strict=True)):
            if row.closed:
                continue  # a finished row keeps being computed in the batch: ignore its tokens
            if row.stop_reason in (None, "length"):  # a stop token, a cancel or a timeout adds nothing
                row.tokens += 1
                if row.first_token_at is None:
                    row.first_token_at = now
                piece = row.decoder.push(token)
                if piece:
                    self.on_text(index, piece)
            if row.stop_reason is not None:
                self.close(index)

    def end(self) -> None:
        """generate() returned: a row still open ran into the batch's overall limit."""
        for index, row in enumerate(self.rows):
            if not row.closed:
                row.stop_reason = row.stop_reason or "length"
                self.close(index)

    def close(self, index: int) -> None:
        row = self.rows[index]
        row.closed = True
        if row.stop_reason in ("eos", "length"):
            rest = row.decoder.finish()
            if rest:
                self.on_text(index, rest)
        self.on_end(index)
