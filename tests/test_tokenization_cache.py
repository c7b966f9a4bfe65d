"""Tokenized datasets are reused only for exactly the same rows, tokenizer, template and max_length."""

from __future__ import annotations

import logging

import pytest

from tests.tiny_model import CHAT_TEMPLATE, build_tokenizer
from trainer.data import tokenization_cache
from trainer.data.formats import to_examples
from trainer.data.records import Records
from trainer.data.tokenization import TokenizedRows, tokenize_examples
from trainer.data.tokenization_cache import cache_key, tokenized


def _chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


CHATS = [_chat(f"What is {i} plus {i}?", str(2 * i)) for i in range(6)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def _tokenize(rows: list[dict], tokenizer, max_length: int = 64) -> tuple[str, callable]:
    records = Records(rows, "chats.jsonl", tuple(range(1, len(rows) + 1)))
    data_format, examples = to_examples(records, "auto")
    calls = []

    def tokenize() -> TokenizedRows:
        calls.append(1)
        return tokenize_examples(examples, tokenizer, CHAT_TEMPLATE, max_length, records.where)

    return cache_key(rows, data_format, tokenizer, CHAT_TEMPLATE, max_length), tokenize, calls


def test_a_second_job_reuses_the_tokens(tokenizer, tmp_path):
    key, tokenize, calls = _tokenize(CHATS, tokenizer)
    first, reused = tokenized(str(tmp_path), key, tokenize)
    assert not reused and calls == [1]
    second, reused = tokenized(str(tmp_path), key, tokenize)
    assert reused and calls == [1]  # not tokenized again
    assert second == first
    assert second.completion_mask is not None and any(any(mask) for mask in second.completion_mask)


def test_text_rows_without_masks_and_dropped_counts_survive(tokenizer, tmp_path):
    rows = [{"text": "hello world " * n} for n in (1, 2, 3, 60)]
    key, tokenize, _ = _tokenize(rows, tokenizer, max_length=32)
    first, _ = tokenized(str(tmp_path), key, tokenize)
    assert first.completion_mask is None and first.dropped_too_long == 1
    assert tokenized(str(tmp_path), key, tokenize) == (first, True)


def test_anything_that_changes_the_tokens_changes_the_key(tokenizer):
    key, _, _ = _tokenize(CHATS, tokenizer)
    edited = [dict(row) for row in CHATS]
    edited[3] = _chat("hi", "ho")
    assert _tokenize(edited, tokenizer)[0] != key
    assert _tokenize(CHATS, tokenizer, max_length=65)[0] != key
    assert cache_key(CHATS, "messages", tokenizer, CHAT_TEMPLATE + " ", 64) != key
    other = build_tokenizer()
    other.add_special_tokens({"additional_special_tokens": ["<tool>"]})
    assert cache_key(CHATS, "messages", other, CHAT_TEMPLATE, 64) != key
    assert _tokenize(CHATS, build_tokenizer())[0] == key  # an equal tokenizer loaded again


def test_a_damaged_entry_is_tokenized_again(tokenizer, tmp_path, caplog):
    key, tokenize, calls = _tokenize(CHATS, tokenizer)
    first, _ = tokenized(str(tmp_path), key, tokenize)
    (tmp_path / "tokenized" / f"{key}{tokenization_cache.SUFFIX}").write_bytes(b"not an archive")
    with caplog.at_level(logging.WARNING):
        again, reused = tokenized(str(tmp_path), key, tokenize)
    assert not reused and again == first and calls == [1, 1]
    assert "unreadable" in caplog.text


def test_an_unwritable_cache_costs_only_the_cache(tokenizer, tmp_path, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    key, tokenize, _ = _tokenize(CHATS, tokenizer)
    with caplog.at_level(logging.WARNING):
        rows, reused = tokenized(str(blocker), key, tokenize)
    assert not reused and rows.input_ids
    assert "could not cache" in caplog.text


def test_least_recently_used_entries_are_evicted(tokenizer, tmp_path, monkeypatch):
    monkeypatch.setattr(tokenization_cache, "MAX_ENTRIES", 2)
    keys = []
    for n in range(3):
        key, tokenize, _ = _tokenize(CHATS[: n + 2], tokenizer)
        tokenized(str(tmp_path), key, tokenize)
        keys.append(key)
    kept = {path.name.removesuffix(tokenization_cache.SUFFIX) for path in (tmp_path / "tokenized").iterdir()}
    assert kept == {keys[1], keys[2]}
