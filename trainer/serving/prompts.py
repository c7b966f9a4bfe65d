"""Turn a Generate request into prompt token ids and the ids that end its answer, as training formatted it.

Chat turns go through the chat template saved with the adapter (the one it was trained with), so the model
stops where it learned to stop; a raw prompt gets one BOS, as the trainer gives plain text. Templates render
in the bounded child of trainer/data/template_sandbox.py: a hostile one fails its own request, within
`timeout_s`.
"""

from __future__ import annotations

from typing import Any

from protocol.errors import UserError
from protocol.serve import Generate
from trainer.data.chat_template import render

_REPLY_MARKER = "qlora-bot-reply-marker"


def prompt_ids(
    tokenizer: Any,
    template: str,
    request: Generate,
    *,
    timeout_s: float | None = None,
    whose: str = "the chat template",
) -> list[int]:
    """The token ids the model continues from; `whose` names the template in errors."""
    if (request.messages is None) == (request.prompt is None):
        raise UserError("a request needs either messages or a prompt, not both", "send one of the two")
    if request.messages is not None:
        messages = [dict(message) for message in request.messages]
        if not messages:
            raise UserError("messages is empty", "send at least one user turn")
        text = render(tokenizer, template, messages, True, timeout_s=timeout_s, whose=whose)
        # The template writes BOS itself where the model wants one: adding special tokens would double it.
        return _encode(tokenizer, text)
    ids = _encode(tokenizer, request.prompt or "")
    bos = tokenizer.bos_token_id
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]  # the trainer's rule for plain text: exactly one BOS
    return ids


def stop_ids(
    tokenizer: Any, template: str | None, model_eos: Any = None, *, timeout_s: float | None = None
) -> frozenset[int]:
    """EOS, the model's own end ids (generation_config), and the template's end-of-turn token if special."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, model_eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(item for item in value if isinstance(item, int))
    end = end_of_turn_id(tokenizer, template, timeout_s=timeout_s) if template else None
    if end is not None:
        ids.add(end)
    return frozenset(ids)


def end_of_turn_id(tokenizer: Any, template: str, *, timeout_s: float | None = None) -> int | None:
    """The special token the template writes right after an assistant reply (`<|im_end|>`, `<|eot_id|>`).

    Found by rendering a one-exchange chat and looking at what follows the reply, because templates name
    this token in many ways. Only a single special token counts: plain text after a reply (the default
    template's blank line) must not end an answer.
    """
    messages = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": _REPLY_MARKER}]
    try:
        text = render(tokenizer, template, messages, False, timeout_s=timeout_s)
    except UserError:  # a template may refuse this chat (e.g. it insists on a system turn): no extra stop
        return None
    at = text.find(_REPLY_MARKER)
    if at < 0:
        return None
    tail = text[at + len(_REPLY_MARKER) :].lstrip(" ")
    specials = sorted(set(tokenizer.all_special_tokens), key=len, reverse=True)
    for token in specials:
        if token and tail.startswith(token):
            token_id = tokenizer.convert_tokens_to_ids(token)
            return token_id if isinstance(token_id, int) else None
    return None


def _encode(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])
