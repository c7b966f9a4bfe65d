"""Which chat template a job trains with, and where each assistant reply sits in a rendered chat.

The base tokenizer's own template wins; a base model without one gets DEFAULT_CHAT_TEMPLATE. The
template used is saved with the adapter so /ask formats prompts exactly as training did.
"""

from __future__ import annotations

from typing import Any

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


def render(tokenizer: Any, template: str, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=add_generation_prompt
    )


def assistant_spans(
    tokenizer: Any, template: str, messages: list[dict[str, str]]
) -> tuple[str, list[tuple[int, int]]]:
    """Render a chat and return the character span of every assistant reply in it.

    A reply spans from the end of the conversation before it (with the generation prompt) to the end of
    the conversation including it. That relies on the template rendering prefixes of a chat as prefixes
    of the text; a turn where it does not (templates that rewrite earlier turns) gets no span, so it is
    not trained on rather than trained on the wrong characters.
    """
    full = render(tokenizer, template, messages, add_generation_prompt=False)
    spans = []
    for index, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render(tokenizer, template, messages[:index], add_generation_prompt=True) if index else ""
        through = render(tokenizer, template, messages[: index + 1], add_generation_prompt=False)
        if full.startswith(through) and through.startswith(before) and len(through) > len(before):
            spans.append((len(before), len(through)))
    return full, spans
