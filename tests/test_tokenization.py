"""trainer/data/tokenization.py and chat_template.py: loss masks cover exactly what the model learns."""

from __future__ import annotations

import pytest

from protocol.errors import UserError
from tests.tiny_model import build_tokenizer
from trainer.data import chat_template
from trainer.data.chat_template import DEFAULT_CHAT_TEMPLATE, choose_chat_template
from trainer.data.formats import ChatExample, CompletionExample, TextExample
from trainer.data.tokenization import tokenize_examples


def where(index: int) -> str:
    return f"data.jsonl line {index + 1}"


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def trained_text(tokenizer, ids, mask):
    return tokenizer.decode([token for token, bit in zip(ids, mask, strict=True) if bit])


def test_chat_loss_covers_every_assistant_reply_and_nothing_else(tokenizer):
    chat = ChatExample(
        messages=(
            ("system", "Be brief."),
            ("user", "Capital of France?"),
            ("assistant", "Paris."),
            ("user", "And Italy?"),
            ("assistant", "Rome."),
        )
    )
    template, source = choose_chat_template(tokenizer)
    assert source == "base model"
    rows = tokenize_examples([chat], tokenizer, template, 512, where)
    ids, mask = rows.input_ids[0], rows.completion_mask[0]
    assert ids[0] == tokenizer.bos_token_id
    assert trained_text(tokenizer, ids, mask) == "Paris.<|im_end|>\nRome.<|im_end|>\n"
    assert "Capital" not in trained_text(tokenizer, ids, mask)


def test_default_template_when_the_tokenizer_has_none(tokenizer):
    plain = build_tokenizer(chat_template=None)
    template, source = choose_chat_template(plain)
    assert (template, source) == (DEFAULT_CHAT_TEMPLATE, "qlora-bot default")
    chat = ChatExample(messages=(("user", "Hi"), ("assistant", "Hello there.")))
    rows = tokenize_examples([chat], plain, template, 512, where)
    ids, mask = rows.input_ids[0], rows.completion_mask[0]
    assert tokenizer.decode(ids).startswith("<s>### User:\nHi\n\n### Assistant:\n")
    # The reply ends with EOS, so generation learns to stop there.
    assert trained_text(plain, ids, mask) == "Hello there.</s>\n\n"


def test_completion_mask_covers_completion_and_eos(tokenizer):
    example = CompletionExample(prompt="Question: 2+2? Answer:", completion=" 4")
    rows = tokenize_examples([example], tokenizer, DEFAULT_CHAT_TEMPLATE, 512, where)
    ids, mask = rows.input_ids[0], rows.completion_mask[0]
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert trained_text(tokenizer, ids, mask) == " 4</s>"


def test_text_trains_on_every_token_with_one_bos_and_eos(tokenizer):
    rows = tokenize_examples(
        [TextExample("hello world"), TextExample("<s>[INST] hi [/INST] hello </s>")],
        tokenizer,
        DEFAULT_CHAT_TEMPLATE,
        512,
        where,
    )
    assert rows.completion_mask is None
    for ids in rows.input_ids:
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
        assert ids.count(tokenizer.eos_token_id) == 1 and ids[-1] == tokenizer.eos_token_id


def test_too_long_rows_are_dropped_and_counted(tokenizer):
    rows = tokenize_examples(
        [TextExample("short"), TextExample("long " * 200)], tokenizer, DEFAULT_CHAT_TEMPLATE, 64, where
    )
    assert len(rows.input_ids) == 1 and rows.dropped_too_long == 1
    assert "1 longer than max_length dropped" in rows.summary()


def test_every_row_too_long_is_a_user_error(tokenizer):
    with pytest.raises(UserError) as caught:
        tokenize_examples([TextExample("long " * 200)] * 3, tokenizer, DEFAULT_CHAT_TEMPLATE, 32, where)
    assert (
        "every example is longer than max_length=32 tokens (3 rows; the shortest has" in caught.value.message
    )
    assert "raise max_length to at least" in caught.value.hint


class Recording:
    """The real tokenizer, noting every text it is asked to encode and every chat it renders."""

    def __init__(self, inner):
        self.inner = inner
        self.encoded: list[str] = []
        self.rendered: list[str] = []

    def __call__(self, text, **kwargs):
        self.encoded.extend([text] if isinstance(text, str) else text)
        return self.inner(text, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        self.rendered.append(self.inner.apply_chat_template(*args, **kwargs))
        return self.rendered[-1]

    def __getattr__(self, name):
        return getattr(self.inner, name)


# The tiny tokenizer's longest vocabulary entry is "<|im_start|>": 12 characters, one token.
LONGEST = "<|im_start|>"


def test_a_row_longer_than_any_tokenization_is_never_tokenized(tokenizer):
    spy = Recording(tokenizer)
    examples = [TextExample("a" * 1_000_000), TextExample("short")]
    rows = tokenize_examples(examples, spy, DEFAULT_CHAT_TEMPLATE, 16, where)
    assert rows.dropped_too_long == 1 and len(rows.input_ids) == 1
    assert max(map(len, spy.encoded)) < 1000


def test_a_chat_longer_than_any_tokenization_is_never_rendered_or_tokenized(tokenizer, monkeypatch):
    spy = Recording(tokenizer)
    rendered: list[str] = []  # every message the template renderer (a child process) is sent
    renderer = chat_template._renderer
    original = renderer.render

    def recording(template, chats, special_tokens, seconds):
        rendered.extend(message["content"] for messages, _prompt in chats for message in messages)
        return original(template, chats, special_tokens, seconds)

    monkeypatch.setattr(renderer, "render", recording)
    template, _ = choose_chat_template(tokenizer)
    long_chat = ChatExample((("user", "q" * 1_000_000), ("assistant", "a")))
    short_chat = ChatExample((("user", "q"), ("assistant", "a")))
    rows = tokenize_examples([long_chat, short_chat], spy, template, 64, where)
    assert rows.dropped_too_long == 1 and len(rows.input_ids) == 1
    assert max(map(len, spy.encoded)) < 1000
    assert rendered and max(map(len, rendered)) < 1000


def test_the_length_bound_never_drops_a_row_that_fits(tokenizer):
    spy = Recording(tokenizer)
    fits = TextExample(LONGEST * 14)  # 14 tokens, with BOS and EOS exactly max_length
    tokenized_too_long = TextExample(LONGEST * 15)  # 180 characters: within the bound, so tokenized
    never_tokenized = TextExample(LONGEST * 17)  # 204 characters: more than 16 tokens of 12 can cover
    rows = tokenize_examples(
        [fits, tokenized_too_long, never_tokenized], spy, DEFAULT_CHAT_TEMPLATE, 16, where
    )
    assert len(rows.input_ids) == 1 and len(rows.input_ids[0]) == 16
    assert rows.dropped_too_long == 2
    assert spy.encoded == [fits.text, tokenized_too_long.text]


def test_every_row_too_long_to_tokenize_says_how_long_at_least(tokenizer):
    with pytest.raises(UserError) as caught:
        tokenize_examples([TextExample("a" * 1000)] * 2, tokenizer, DEFAULT_CHAT_TEMPLATE, 16, where)
    assert caught.value.message == (
        "every example is longer than max_length=16 tokens (2 rows; the shortest has at least 84 tokens)"
    )


def test_a_template_that_refuses_a_conversation_names_its_line(tokenizer):
    template = (
        "{% if messages[0]['role'] == 'system' %}"
        "{{ raise_exception('System role not supported') }}{% endif %}"
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
    )
    chats = [
        ChatExample((("user", "Hi"), ("assistant", "Hello!"))),
        ChatExample((("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"))),
    ]
    with pytest.raises(UserError) as caught:
        tokenize_examples(chats, tokenizer, template, 64, where)
    assert caught.value.message == (
        "data.jsonl line 2: the chat template refused this conversation (System role not supported)"
    )
    assert caught.value.hint
