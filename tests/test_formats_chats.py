"""trainer.data.formats: chats no template renders as written, and characters that are not text, are refused
with their line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from protocol.job_spec import DatasetSpec, Limits
from tests.test_formats import GOOD, chat, error_of, records
from trainer.data.formats import ChatExample, to_examples
from trainer.data.sources import read_records


def sharegpt(*turns: tuple[str, str]) -> dict[str, Any]:
    return {"conversations": [{"from": role, "value": value} for role, value in turns]}


ORDER = "a conversation is an optional system message, then user and assistant turns"
NOT_TEXT = [
    pytest.param(
        [GOOD, chat(("assistant", "Welcome!"), ("user", "Hi"), ("assistant", "Hello!"))],
        "data.jsonl line 2: messages[0] is an assistant turn before any user turn; a conversation starts "
        "with a user turn (after an optional system message)",
        ORDER,
        id="assistant-first",
    ),
    pytest.param(
        [chat(("user", "Hi"), ("user", "Are you there?"), ("assistant", "Yes."))],
        "data.jsonl line 1: messages[1] is a second user turn in a row (after messages[0])",
        ORDER,
        id="two-user-turns",
    ),
    pytest.param(
        [chat(("user", "Hi"), ("assistant", "Hello!"), ("assistant", "Still there?"))],
        "data.jsonl line 1: messages[2] is a second assistant turn in a row (after messages[1])",
        ORDER,
        id="two-assistant-turns",
    ),
    pytest.param(
        [
            chat(
                ("user", "Hi"),
                ("assistant", "Hello!"),
                ("system", "Be brief."),
                ("user", "?"),
                ("assistant", "!"),
            )
        ],
        "data.jsonl line 1: messages[2] is a system message after the first turn; a system message may only "
        "come first",
        ORDER,
        id="system-in-the-middle",
    ),
    pytest.param(
        [sharegpt(("gpt", "Hi!"), ("human", "Hi"), ("gpt", "Hello!"))],
        "data.jsonl line 1: conversations[0] is an assistant turn before any user turn; a conversation "
        "starts with a user turn (after an optional system message)",
        ORDER,
        id="sharegpt-gpt-first",
    ),
    pytest.param(
        [
            {
                "prompt": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Hello?"}],
                "completion": [{"role": "assistant", "content": "Hi!"}],
            }
        ],
        "data.jsonl line 1: prompt[1] is a second user turn in a row (after prompt[0])",
        ORDER,
        id="conversational-prompt-out-of-order",
    ),
    pytest.param(
        [chat(("user", " \n"), ("assistant", "Hello!"))],
        "data.jsonl line 1: messages[0].content is an empty user turn",
        "each row needs `messages`",
        id="empty-user-turn",
    ),
    pytest.param(
        [sharegpt(("human", ""), ("gpt", "Hello!"))],
        "data.jsonl line 1: conversations[0].value is an empty user turn",
        "each row needs `conversations`",
        id="sharegpt-empty-user-turn",
    ),
    pytest.param(
        [{"text": "fine"}, {"text": "a\x00b"}],
        "data.jsonl line 2: text holds a NUL character (\\u0000) at character 2",
        "remove the NUL characters",
        id="nul-in-text",
    ),
    pytest.param(
        [chat(("user", "Hi"), ("assistant", "Hel\x00lo"))],
        "data.jsonl line 1: messages[1].content holds a NUL character (\\u0000) at character 4",
        "remove the NUL characters",
        id="nul-in-a-reply",
    ),
    pytest.param(
        [{"instruction": "Say hi", "input": "\x00", "output": "hi"}],
        "data.jsonl line 1: input holds a NUL character (\\u0000) at character 1",
        "remove the NUL characters",
        id="nul-in-alpaca-input",
    ),
    pytest.param(
        [{"text": "smile \ud83d"}],
        "data.jsonl line 1: text holds a lone surrogate \\ud83d at character 7 (half of a UTF-16 pair: "
        "not valid Unicode)",
        "write characters as themselves in UTF-8",
        id="lone-surrogate-in-text",
    ),
    pytest.param(
        [{"prompt": "\udc00?", "completion": "4"}],
        "data.jsonl line 1: prompt holds a lone surrogate \\udc00 at character 1 (half of a UTF-16 pair: "
        "not valid Unicode)",
        "write characters as themselves in UTF-8",
        id="lone-surrogate-in-prompt",
    ),
]


@pytest.mark.parametrize(("rows", "message", "hint"), NOT_TEXT)
def test_chats_out_of_order_and_non_text_are_refused(
    rows: list[dict[str, Any]], message: str, hint: str
) -> None:
    error = error_of(records(*rows))
    assert error.message == message
    assert error.hint.startswith(hint)


def test_empty_system_messages_are_dropped_and_escaped_pairs_are_text(tmp_path: Path) -> None:
    path = tmp_path / "chats.jsonl"
    row = sharegpt(("system", ""), ("human", "Hi \\ud83d\\ude00"), ("gpt", "Hello!"))
    path.write_text(json.dumps(row).replace("\\\\u", "\\u") + "\n")  # the emoji as a JSON escape pair
    _, [example] = to_examples(
        read_records(DatasetSpec(source=str(path), kind="file"), tmp_path, Limits()), "auto"
    )
    assert example == ChatExample((("user", "Hi \U0001f600"), ("assistant", "Hello!")))
