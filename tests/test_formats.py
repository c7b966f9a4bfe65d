"""trainer.data.formats: detection from real files of every type, the mapping onto examples, and bad rows."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protocol.errors import UserError
from protocol.job_spec import DatasetSpec, Limits
from trainer.data.formats import (
    FORMAT_COLUMNS,
    ChatExample,
    CompletionExample,
    Example,
    TextExample,
    detect_format,
    to_examples,
)
from trainer.data.records import Records
from trainer.data.sources import read_records

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
CHAT_EXAMPLE = ChatExample((("user", "Hi"), ("assistant", "Hello!")))

# One row per format and the example it becomes.
SAMPLES: dict[str, tuple[dict[str, Any], Example]] = {
    "messages": ({"messages": CHAT}, CHAT_EXAMPLE),
    "sharegpt": (
        {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]},
        CHAT_EXAMPLE,
    ),
    "alpaca": ({"instruction": "Hi", "input": "", "output": "Hello!"}, CHAT_EXAMPLE),
    "prompt-completion": ({"prompt": "2+2=", "completion": "4"}, CompletionExample("2+2=", "4")),
    "text": ({"text": "plain text"}, TextExample("plain text")),
}
FLAT = ("alpaca", "prompt-completion", "text")  # the formats a CSV can hold


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    suffix = path.suffix
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    elif suffix == ".json":
        path.write_text(json.dumps(rows, indent=2))
    elif suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif suffix == ".csv":
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    else:
        path.write_text("".join(row["text"] + "\n" for row in rows))


CASES = [
    *[(fmt, ext) for fmt in SAMPLES for ext in (".jsonl", ".json", ".parquet")],
    *[(fmt, ".csv") for fmt in FLAT],
    ("text", ".txt"),
]


@pytest.mark.parametrize(("fmt", "ext"), CASES, ids=[f"{fmt}{ext}" for fmt, ext in CASES])
def test_detects_each_format_from_each_file_type(tmp_path: Path, fmt: str, ext: str) -> None:
    row, example = SAMPLES[fmt]
    path = tmp_path / f"data{ext}"
    write_rows(path, [row, row])
    records = read_records(DatasetSpec(source=str(path), kind="file"), tmp_path, Limits())
    assert detect_format(records) == fmt
    assert to_examples(records, "auto") == (fmt, [example, example])


def records(*rows: dict[str, Any], origin: str = "data.jsonl") -> Records:
    return Records(list(rows), origin, tuple(range(1, len(rows) + 1)))


def error_of(recs: Records, fmt: str = "auto") -> UserError:
    with pytest.raises(UserError) as caught:
        to_examples(recs, fmt)
    assert caught.value.hint
    return caught.value


# ---------------------------------------------------------------------------------------------
# Detection and mapping


def test_detection_priority() -> None:
    assert detect_format(records({"messages": CHAT, "text": "x"})) == "messages"
    assert detect_format(records({"conversations": [], "instruction": "i", "output": "o"})) == "sharegpt"
    assert (
        detect_format(records({"instruction": "i", "output": "o", "prompt": "p", "completion": "c"}))
        == "alpaca"
    )
    assert detect_format(records({"prompt": "p", "completion": "c", "text": "t"})) == "prompt-completion"


def test_forced_format_uses_its_own_columns() -> None:
    assert to_examples(records({"messages": CHAT, "text": "x"}), "text") == ("text", [TextExample("x")])


def test_sharegpt_roles_are_mapped() -> None:
    turns = [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"},
        {"from": "user", "value": "Bye"},
        {"from": "assistant", "value": "Bye!"},
    ]
    _, [example] = to_examples(records({"conversations": turns}), "auto")
    assert example == ChatExample(
        (
            ("system", "Be brief."),
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "Bye"),
            ("assistant", "Bye!"),
        )
    )


def test_alpaca_mapping() -> None:
    rows = (
        {"instruction": "Translate", "input": "chat", "output": "cat"},
        {"instruction": "Say hi", "input": None, "output": "hi"},
        {"instruction": "Say hi", "output": "hi", "system": "You are terse."},
        {"instruction": "Say hi", "input": "  ", "output": "hi", "system": ""},
    )
    fmt, examples = to_examples(records(*rows), "auto")
    assert fmt == "alpaca"
    assert examples == [
        ChatExample((("user", "Translate\n\nchat"), ("assistant", "cat"))),
        ChatExample((("user", "Say hi"), ("assistant", "hi"))),
        ChatExample((("system", "You are terse."), ("user", "Say hi"), ("assistant", "hi"))),
        ChatExample((("user", "Say hi"), ("assistant", "hi"))),
    ]


def test_conversational_prompt_completion_becomes_a_chat() -> None:
    row = {
        "prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "Hello!"}],
    }
    assert to_examples(records(row), "auto") == (
        "prompt-completion",
        [ChatExample((("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello!")))],
    )


def test_message_extra_keys_are_ignored() -> None:
    messages = [
        {"role": "user", "content": "Hi", "name": "ann"},
        {"role": "assistant", "content": "Hello!", "tool_calls": None, "weight": 1},
    ]
    assert to_examples(records({"messages": messages, "id": 7}), "auto") == ("messages", [CHAT_EXAMPLE])


def test_examples_line_up_with_rows() -> None:
    rows = [{"text": f"row {n}"} for n in range(5)]
    _, examples = to_examples(records(*rows), "auto")
    assert examples == [TextExample(f"row {n}") for n in range(5)]


# ---------------------------------------------------------------------------------------------
# Bad datasets and their exact messages


def test_unknown_columns() -> None:
    error = error_of(records({"question": "q", "answer": "a"}))
    assert error.message == (
        "data.jsonl: cannot tell the dataset format from its columns (question, answer); accepted formats "
        "and their columns are messages: messages; sharegpt: conversations; alpaca: instruction, output "
        "(optional: input, system); prompt-completion: prompt, completion; text: text"
    )
    assert "--format" in error.hint


def test_forced_format_with_missing_columns() -> None:
    error = error_of(records({"prompt": "p", "completion": "c"}), "alpaca")
    assert error.message == (
        "data.jsonl: format alpaca needs column(s) instruction, output, "
        "but the columns are prompt, completion"
    )


def test_unknown_format_name() -> None:
    assert error_of(records({"text": "x"}), "chatml").message == "unknown dataset format 'chatml'"


def test_no_rows() -> None:
    assert error_of(records()).message == "data.jsonl has no rows"


def chat(*turns: tuple[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": role, "content": content} for role, content in turns]}


GOOD = chat(("user", "Hi"), ("assistant", "Hello!"))

BAD_ROWS = [
    pytest.param(
        [GOOD, GOOD, GOOD, chat(("system", "s"), ("user", "Hi"), ("bot", "Hello"))],
        "auto",
        "data.jsonl line 4: messages[2].role must be one of system, user, assistant (got 'bot')",
        id="wrong-role",
    ),
    pytest.param(
        [chat(("user", ["Hi"]), ("assistant", "Hello!"))],
        "auto",
        "data.jsonl line 1: messages[0].content must be a string (got list)",
        id="non-string-content",
    ),
    pytest.param(
        [chat(("user", "Hi"), ("assistant", None))],
        "auto",
        "data.jsonl line 1: messages[1].content must be a string (got null)",
        id="null-content",
    ),
    pytest.param(
        [GOOD, chat(("user", "Hi"), ("assistant", "Hello!"), ("user", "And?"))],
        "auto",
        "data.jsonl line 2: messages must end with an assistant turn (the last is user)",
        id="trailing-user-turn",
    ),
    pytest.param(
        [chat(("system", "s"), ("user", "Hi"))],
        "auto",
        "data.jsonl line 1: messages has no assistant turn to learn from",
        id="no-assistant-turn",
    ),
    pytest.param(
        [chat(("user", "Hi"), ("assistant", "  \n"))],
        "auto",
        "data.jsonl line 1: messages[1].content is an empty assistant reply",
        id="empty-assistant-reply",
    ),
    pytest.param(
        [{"messages": []}], "auto", "data.jsonl line 1: messages is an empty list", id="empty-messages"
    ),
    pytest.param(
        [{"messages": "Hi"}],
        "auto",
        "data.jsonl line 1: messages must be a list of messages (got string)",
        id="messages-not-a-list",
    ),
    pytest.param(
        [{"messages": ["Hi"]}],
        "auto",
        "data.jsonl line 1: messages[0] must be an object with role and content (got string)",
        id="message-not-an-object",
    ),
    pytest.param(
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Yo"}]}],
        "auto",
        "data.jsonl line 1: conversations[1].from must be one of human, gpt, system, user, assistant "
        "(got 'bot')",
        id="sharegpt-wrong-from",
    ),
    pytest.param(
        [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}]}],
        "auto",
        "data.jsonl line 1: conversations[1].value is an empty assistant reply",
        id="sharegpt-empty-reply",
    ),
    pytest.param(
        [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": " "}],
        "auto",
        "data.jsonl line 2: completion is empty",
        id="empty-completion",
    ),
    pytest.param(
        [{"prompt": "2+2=", "completion": "4"}, {"prompt": "3+3=", "completion": [{"role": "assistant"}]}],
        "auto",
        "data.jsonl line 2: prompt and completion must both be strings in every row, as in the first "
        "(got string and list)",
        id="mixed-prompt-completion",
    ),
    pytest.param(
        [{"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "user", "content": "x"}]}],
        "auto",
        "data.jsonl line 1: completion has no assistant turn to learn from",
        id="conversational-completion-without-assistant",
    ),
    pytest.param(
        [{"instruction": "Do it", "output": ""}],
        "auto",
        "data.jsonl line 1: output is empty",
        id="alpaca-empty-output",
    ),
    pytest.param(
        [{"instruction": "Do it", "input": 3, "output": "done"}],
        "auto",
        "data.jsonl line 1: input must be a string (got number)",
        id="alpaca-non-string-input",
    ),
    pytest.param(
        [{"text": None}], "auto", "data.jsonl line 1: text must be a string (got null)", id="null-text"
    ),
    pytest.param([{"text": "   "}], "auto", "data.jsonl line 1: text is empty", id="blank-text"),
    pytest.param(
        [{"text": "ok"}, {"content": "x"}],
        "auto",
        "data.jsonl line 2: missing column 'text' (columns: content)",
        id="later-row-missing-column",
    ),
]


@pytest.mark.parametrize(("rows", "fmt", "message"), BAD_ROWS)
def test_bad_rows_name_the_row_and_field(rows: list[dict[str, Any]], fmt: str, message: str) -> None:
    assert error_of(records(*rows), fmt).message == message


def test_all_rows_are_checked_and_the_rest_counted() -> None:
    rows = [{"text": "ok"}, {"text": ""}, {"text": 1}, {"text": "ok"}, {"text": None}, {"text": " "}]
    error = error_of(records(*rows))
    assert error.message == "data.jsonl line 2: text is empty (and 3 more bad rows)"
    assert error_of(records({"text": ""}, {"text": ""})).message == (
        "data.jsonl line 1: text is empty (and 1 more bad row)"
    )


def test_rows_without_line_numbers_are_named_by_position() -> None:
    hub = Records([{"text": "ok"}, {"text": ""}], "Hub dataset org/name (split train)")
    assert error_of(hub).message == "row 2 of Hub dataset org/name (split train): text is empty"


def test_line_numbers_come_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\n\n\n{"text": ""}\n')
    recs = read_records(DatasetSpec(source=str(path), kind="file"), tmp_path, Limits())
    assert error_of(recs).message == "data.jsonl line 6: text is empty"


def test_format_columns_cover_every_protocol_format() -> None:
    from protocol.job_spec import DATASET_FORMATS

    assert set(FORMAT_COLUMNS) == set(DATASET_FORMATS) - {"auto"}
