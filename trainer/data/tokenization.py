"""Turn typed examples into token ids and loss masks, dropping what cannot fit in max_length.

We tokenize ourselves rather than letting trl do it so that every format gets the same treatment:
one BOS, one EOS, loss only on completions and assistant replies, and a clear count of dropped rows.
A row whose text is longer than max_length tokens could ever cover is dropped before it is tokenized:
tokenizing a megabyte of text costs hundreds of megabytes, only to throw the result away.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from protocol.errors import UserError
from trainer.data.chat_template import assistant_spans
from trainer.data.formats import ChatExample, CompletionExample, Example, TextExample


@dataclass(frozen=True)
class TokenizedRows:
    input_ids: list[list[int]]
    completion_mask: list[list[int]] | None  # None: every token is trained on (plain text)
    dropped_too_long: int
    dropped_untrainable: int  # chats whose template hid every assistant reply

    @property
    def total_tokens(self) -> int:
        return sum(len(ids) for ids in self.input_ids)

    def summary(self) -> str:
        parts = [f"{len(self.input_ids)} examples, {self.total_tokens} tokens"]
        if self.dropped_too_long:
            parts.append(f"{self.dropped_too_long} longer than max_length dropped")
        if self.dropped_untrainable:
            parts.append(f"{self.dropped_untrainable} with no trainable reply dropped")
        return "; ".join(parts)


def tokenize_examples(
    examples: Sequence[Example],
    tokenizer: Any,
    chat_template: str,
    max_length: int,
    where: Callable[[int], str],
) -> TokenizedRows:
    """Token ids (and completion masks for chat and prompt/completion data) for every example that fits."""
    if not examples:
        raise UserError("the dataset has no examples", "add rows to the dataset")
    if not getattr(tokenizer, "is_fast", False):
        raise UserError(
            "the base model's tokenizer has no fast (tokenizer.json) version",
            "use a base model that ships tokenizer.json",
        )
    fits = _LengthBound(tokenizer, max_length)
    first = examples[0]
    if isinstance(first, TextExample):
        rows: list[_Row] = [_text_row(tokenizer, example, fits) for example in examples]  # type: ignore[arg-type]
    elif isinstance(first, CompletionExample):
        rows = [_completion_row(tokenizer, example, fits) for example in examples]  # type: ignore[arg-type]
    else:
        rows = _chat_ids(tokenizer, chat_template, examples, fits, where)  # type: ignore[arg-type]
    return _fit(rows, max_length, masked=not isinstance(first, TextExample), where=where)


def split_off_eval(
    rows: TokenizedRows, fraction: float, seed: int
) -> tuple[TokenizedRows, TokenizedRows | None]:
    """(train, eval): a seeded random share `fraction` of the examples held out for eval loss."""
    if fraction <= 0:
        return rows, None
    count = len(rows.input_ids)
    held_out = round(count * fraction)
    if held_out < 1 or held_out >= count:
        raise UserError(
            f"eval_fraction={fraction} of {count} examples leaves no eval or no train examples",
            "use a larger dataset or a different eval_fraction (0 disables eval)",
        )
    order = list(range(count))
    random.Random(seed).shuffle(order)

    def pick(indices: list[int]) -> TokenizedRows:
        masks = rows.completion_mask
        return TokenizedRows(
            [rows.input_ids[i] for i in indices],
            [masks[i] for i in indices] if masks is not None else None,
            rows.dropped_too_long,
            rows.dropped_untrainable,
        )

    return pick(sorted(order[held_out:])), pick(sorted(order[:held_out]))


@dataclass(frozen=True)
class _Unread:
    """A row dropped as too long from its length alone: it has at least this many tokens."""

    least_tokens: int


_Row = tuple[list[int], list[int] | None] | _Unread


class _LengthBound:
    """Which texts are too long for max_length tokens whatever they say, from the longest token's length.

    A token stands for at most as many characters as its vocabulary entry has (a byte-level entry has
    one character per byte of text; a continuation prefix such as "##" only adds to it), so a text
    needs at least len(text) / longest tokens. Tokenizers that can fold a run of text of any length
    into one token (unknown words in WordLevel or WordPiece, unknowns fused in Unigram or BPE without
    byte fallback) get no bound; a normalizer can shorten text, so the bound then uses its output."""

    def __init__(self, tokenizer: Any, max_length: int) -> None:
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.longest = _longest_token(self.backend)
        self.max_length = max_length

    def check(self, chars: int, text: Callable[[], str] | None = None) -> _Unread | None:
        """An _Unread when `chars` characters of text need more than max_length tokens."""
        if self.longest is None or chars <= self.longest * self.max_length:
            return None
        normalizer = getattr(self.backend, "normalizer", None)
        if normalizer is not None and text is not None:
            chars = len(normalizer.normalize_str(text()))
            if chars <= self.longest * self.max_length:
                return None
        elif normalizer is not None:
            return None  # the text itself is needed to know, and is not at hand here
        return _Unread(-(-chars // self.longest))


def _text_row(tokenizer: Any, example: TextExample, fits: _LengthBound) -> _Row:
    return fits.check(len(example.text), lambda: example.text) or (_text_ids(tokenizer, example.text), None)


def _completion_row(tokenizer: Any, example: CompletionExample, fits: _LengthBound) -> _Row:
    chars = len(example.prompt) + len(example.completion)
    unread = fits.check(chars, lambda: example.prompt + example.completion)
    return unread or _completion_ids(tokenizer, example)


def _longest_token(backend: Any) -> int | None:
    model = getattr(backend, "model", None)
    if type(model).__name__ != "BPE":
        return None
    if model.unk_token is not None and model.fuse_unk and not model.byte_fallback:
        return None
    return max(map(len, backend.get_vocab(with_added_tokens=True)), default=1) or 1


def _fit(rows: list[_Row], max_length: int, masked: bool, where: Callable[[int], str]) -> TokenizedRows:
    kept_ids, kept_masks = [], []
    too_long = untrainable = 0
    shortest_too_long: int | None = None
    only_bounded = True  # the shortest too-long row's count is a lower bound, not exact
    for row in rows:
        if isinstance(row, _Unread):
            too_long += 1
            if shortest_too_long is None or row.least_tokens < shortest_too_long:
                shortest_too_long, only_bounded = row.least_tokens, True
            continue
        ids, mask = row
        if masked and not any(mask or ()):
            untrainable += 1
        elif len(ids) > max_length:
            too_long += 1
            if shortest_too_long is None or len(ids) <= shortest_too_long:
                shortest_too_long, only_bounded = len(ids), False
        else:
            kept_ids.append(ids)
            kept_masks.append(mask)
    if not kept_ids:
        if too_long:
            least = "at least " if only_bounded else ""
            raise UserError(
                f"every example is longer than max_length={max_length} tokens "
                f"({too_long} rows; the shortest has {least}{shortest_too_long} tokens)",
                f"raise max_length to at least {shortest_too_long}, or shorten the rows",
            )
        raise UserError(
            f"no example has an assistant reply the chat template marks as trainable (first: {where(0)})",
            "use a base model whose chat template renders earlier turns unchanged, or plain text format",
        )
    return TokenizedRows(kept_ids, kept_masks if masked else None, too_long, untrainable)


def _encode(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    # Datasets in the Llama-2 style already start with a literal "<s>" (FACTS.md: guanaco): adding the
    # tokenizer's BOS on top would give two.
    ids = _encode(tokenizer, text)
    return _with_bos_eos(tokenizer, ids)


def _with_bos_eos(tokenizer: Any, ids: list[int]) -> list[int]:
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    if eos is not None and ids[-1] != eos:
        ids = [*ids, eos]
    return ids


def _completion_ids(tokenizer: Any, example: CompletionExample) -> tuple[list[int], list[int]]:
    prompt = _encode(tokenizer, example.prompt)
    bos = tokenizer.bos_token_id
    if bos is not None and (not prompt or prompt[0] != bos):
        prompt = [bos, *prompt]
    completion = _encode(tokenizer, example.completion)
    if tokenizer.eos_token_id is not None and (not completion or completion[-1] != tokenizer.eos_token_id):
        completion = [*completion, tokenizer.eos_token_id]
    return prompt + completion, [0] * len(prompt) + [1] * len(completion)


def _chat_ids(
    tokenizer: Any,
    template: str,
    examples: Sequence[ChatExample],
    fits: _LengthBound,
    where: Callable[[int], str],
) -> list[_Row]:
    rows: list[_Row] = []
    rendered, spans, positions = [], [], []
    for index, example in enumerate(examples):
        # Templates render every user and assistant message whole: those alone can rule a chat out,
        # before it is rendered once per reply.
        spoken = sum(len(content) for role, content in example.messages if role != "system")
        unread = fits.check(spoken)
        if unread is None:
            messages = [{"role": role, "content": content} for role, content in example.messages]
            try:
                text, reply_spans = assistant_spans(tokenizer, template, messages)
            except UserError as error:  # e.g. raise_exception("System role not supported"), or a bomb
                raise UserError(f"{where(index)}: {error.message}", error.hint) from None
            unread = fits.check(len(text), lambda text=text: text)
        rows.append(unread or ([], None))
        if unread is None:
            rendered.append(text)
            spans.append(reply_spans)
            positions.append(index)
    if not rendered:
        return rows
    # One batched call: fast tokenizers encode thousands of chats per second this way. The template
    # already carries BOS where the model wants one, so no special tokens are added here.
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    for index, ids, offsets, reply_spans in zip(
        positions, encoded["input_ids"], encoded["offset_mapping"], spans, strict=True
    ):
        mask = [int(any(start <= begin < end for start, end in reply_spans)) for begin, _ in offsets]
        rows[index] = (list(ids), mask)
    return rows
