"""Which chat template a job trains with, where each assistant reply sits in a rendered chat, and rendering.

The base tokenizer's own template wins; a base model without one gets DEFAULT_CHAT_TEMPLATE. The
template used is saved with the adapter so /ask formats prompts exactly as training did. Training and
serving render only through `render_chats`: in a child process with a deadline (template_sandbox.py).
"""

from __future__ import annotations

import atexit
from collections.abc import Sequence
from typing import Any

from protocol.errors import UserError
from trainer.data.template_sandbox import Chat, RenderFailed, RenderTimeout, TemplateRenderer

# A real template renders a chat in about a millisecond; this much is only ever spent by a bomb.
RENDER_TIMEOUT_S = 10.0
TEMPLATE_HINT = "fix or replace the chat template (chat_template.jinja or tokenizer_config.json)"

_renderer = TemplateRenderer()  # one child per process, started on the first render
atexit.register(_renderer.close)

# Plain-text headers that any tokenizer can encode (no new special tokens, so the embedding matrix
# needs no resizing), and the tokenizer's own EOS after each reply so generation stops there.
DEFAULT_CHAT_TEMPLATE = (
    "{% if bos_token %}{{ bos_token }}{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '### System:\n' + message['content'] + '\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '### User:\n' + message['content'] + '\n\n' }}"
    "{% else %}{{ '### Assistant:\n' + message['content'] + eos_token + '\n\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Assistant:\n' }}{% endif %}"
)


def choose_chat_template(tokenizer: Any) -> tuple[str, str]:
    """The template to train with and where it came from ("base model" or "qlora-bot default")."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, str) and own.strip():
        return own, "base model"
    return DEFAULT_CHAT_TEMPLATE, "qlora-bot default"


def render(
    tokenizer: Any,
    template: str,
    messages: list[dict[str, str]],
    add_generation_prompt: bool,
    *,
    timeout_s: float | None = None,
    whose: str = "the chat template",
) -> str:
    return render_chats(
        tokenizer, template, [(messages, add_generation_prompt)], timeout_s=timeout_s, whose=whose
    )[0]


def render_chats(
    tokenizer: Any,
    template: str,
    chats: Sequence[Chat],
    *,
    timeout_s: float | None = None,
    whose: str = "the chat template",
) -> list[str]:
    """Each (messages, add_generation_prompt) rendered as tokenizer.apply_chat_template(tokenize=False)
    would, each within `timeout_s` (default RENDER_TIMEOUT_S). A template that overruns, fails or writes
    too much raises a UserError naming `whose` it is ("the adapter's chat template")."""
    seconds = RENDER_TIMEOUT_S if timeout_s is None else timeout_s
    try:
        return _renderer.render(template, chats, tokenizer.special_tokens_map, seconds)
    except RenderTimeout as error:
        raise UserError(f"{whose} took longer than {error.seconds:g} s to render", TEMPLATE_HINT) from None
    except RenderFailed as error:  # e.g. raise_exception("System role not supported")
        raise UserError(
            f"{whose} refused this conversation ({error})",
            "change the conversation as the template asks, or " + TEMPLATE_HINT,
        ) from None


def assistant_spans(
    tokenizer: Any, template: str, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """Render a chat and return the character span of every assistant reply in it.

    A reply spans from the end of the conversation before it (with the generation prompt) to the end of
    the conversation including it. That relies on the template rendering prefixes of a chat as prefixes
    of the text; a turn where it does not (templates that rewrite earlier turns) gets no span, so it is
    not trained on rather than trained on the wrong characters.
    """
    replies = [index for index, message in enumerate(messages) if message["role"] == "assistant"]
    chats: list[Chat] = [(messages, False)]
    for index in replies:  # one round trip to the renderer for the whole chat
        chats += [(messages[:index], True)] if index else []
        chats.append((messages[: index + 1], False))
    texts = iter(render_chats(tokenizer, template, chats))
    full = next(texts)
    spans = []
    for index in replies:
        before = next(texts) if index else ""
        through = next(texts)
        if full.startswith(through) and through.startswith(before) and len(through) > len(before):
            spans.append((len(before), len(through)))
    return full, spans
