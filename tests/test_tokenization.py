"""trainer/tokenization.py and trainer/chat_template.py: loss masks cover exactly what the model learns."""

from __future__ import annotations

import pytest

from tests.tiny_model import build_tokenizer
from trainer.chat_template import DEFAULT_CHAT_TEMPLATE, choose_chat_template
from trainer.errors import UserError
from trainer.formats import ChatExample, CompletionExample, TextExample
from trainer.tokenization import tokenize_examples


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
