"""Turn typed examples into token ids and loss masks, dropping what cannot fit in max_length.

We tokenize ourselves rather than letting trl do it so that every format gets the same treatment:
one BOS, one EOS, loss only on completions and assistant replies, and a clear count of dropped rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trainer.chat_template import assistant_spans
from trainer.errors import UserError
from trainer.formats import ChatExample, CompletionExample, Example, TextExample


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
    first = examples[0]
    if isinstance(first, TextExample):
        rows = [(_text_ids(tokenizer, example.text), None) for example in examples]  # type: ignore[union-attr]
    elif isinstance(first, CompletionExample):
        rows = [_completion_ids(tokenizer, example) for example in examples]  # type: ignore[arg-type]
    else:
        rows = _chat_ids(tokenizer, chat_template, examples)  # type: ignore[arg-type]
    return _fit(rows, max_length, masked=not isinstance(first, TextExample), where=where)


def _fit(rows: list, max_length: int, masked: bool, where: Callable[[int], str]) -> TokenizedRows:
    kept_ids, kept_masks = [], []
    too_long = untrainable = 0
    shortest_too_long = None
    for ids, mask in rows:
        if masked and not any(mask):
            untrainable += 1
        elif len(ids) > max_length:
            too_long += 1
            shortest_too_long = min(len(ids), shortest_too_long or len(ids))
        else:
            kept_ids.append(ids)
            kept_masks.append(mask)
    if not kept_ids:
        if too_long:
            raise UserError(
                f"every example is longer than max_length={max_length} tokens "
                f"({too_long} rows; the shortest has {shortest_too_long} tokens)",
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


def _chat_ids(tokenizer: Any, template: str, examples: Sequence[ChatExample]) -> list:
    rendered, spans = [], []
    for example in examples:
        messages = [{"role": role, "content": content} for role, content in example.messages]
        text, reply_spans = assistant_spans(tokenizer, template, messages)
        rendered.append(text)
        spans.append(reply_spans)
    # One batched call: fast tokenizers encode thousands of chats per second this way. The template
    # already carries BOS where the model wants one, so no special tokens are added here.
    encoded = tokenizer(rendered, add_special_tokens=False, return_offsets_mapping=True)
    rows = []
    for ids, offsets, reply_spans in zip(encoded["input_ids"], encoded["offset_mapping"], spans, strict=True):
        mask = [int(any(start <= begin < end for start, end in reply_spans)) for begin, _ in offsets]
        rows.append((list(ids), mask))
    return rows
