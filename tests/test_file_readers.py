"""trainer.data.file_readers, json_rows and parquet_reader: caps applied while reading, and a file line (or
row) for every hostile input that used to end as an internal error or be read whole."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protocol.errors import UserError
from protocol.job_spec import DatasetSpec, Limits
from tests.test_data_sources import write
from trainer.data.sources import read_records

SMALL = Limits(max_dataset_bytes=1 << 20, max_rows=1000, max_row_bytes=64)
ROOMY = Limits(max_dataset_bytes=1 << 20, max_rows=1000, max_row_bytes=1 << 20)
DEEP = "[" * 100_000 + "]" * 100_000


def read(path: Path, limits: Limits = SMALL):
    return read_records(DatasetSpec(source=str(path), kind="file"), path.parent / "downloads", limits)


def refused(path: Path, limits: Limits = SMALL) -> UserError:
    with pytest.raises(UserError) as caught:
        read(path, limits)
    assert caught.value.hint, "every user error says what to do"
    return caught.value


HOSTILE_TEXT = [
    pytest.param(
        "data.jsonl",
        '{"text": "a"}\n' + DEEP + "\n",
        "data.jsonl line 2: JSON nested deeper than Python can parse; a row may nest at most 32 levels",
        ROOMY,
        id="jsonl-100k-deep",
    ),
    pytest.param(
        "data.jsonl",
        '{"text": "a", "extra": ' + "[" * 40 + "]" * 40 + "}\n",
        "data.jsonl line 1: JSON nested 41 levels deep; a row may nest at most 32 levels",
        ROOMY,
        id="jsonl-deep-extra-column",
    ),
    pytest.param(
        "data.json",
        '[\n  {"text": "a"},\n  ' + DEEP + "\n]\n",
        "data.json line 3: JSON nested deeper than Python can parse; a row may nest at most 32 levels",
        ROOMY,
        id="json-100k-deep",
    ),
    pytest.param(
        "data.json",
        '[{"text": "a", "extra": ' + "[" * 40 + "]" * 40 + "}]",
        "row 1 of data.json: JSON nested 41 levels deep; a row may nest at most 32 levels",
        ROOMY,
        id="json-deep-row",
    ),
    pytest.param(
        "data.jsonl",
        '{"text": "a"}\n{"text": "b", "n": ' + "9" * 5000 + "}\n",
        "data.jsonl line 2: a number with 5,000 digits (more than 4,300, the most a number may have)",
        ROOMY,
        id="jsonl-5000-digit-integer",
    ),
    pytest.param(
        "data.json",
        '[\n  {"text": "a", "n": ' + "9" * 5000 + "}\n]",
        "data.json line 2: a number with 5,000 digits (more than 4,300, the most a number may have)",
        ROOMY,
        id="json-5000-digit-integer",
    ),
    pytest.param(
        "data.txt",
        "short\n" + "x" * 65 + "\n",
        "data.txt line 2: the row is larger than the limit of 64 bytes per row",
        SMALL,
        id="txt-line-over-the-row-cap",
    ),
    pytest.param(
        "data.jsonl",
        '{"text": "a"}\n\n{"text": "' + "x" * 60 + '"}\n',
        "data.jsonl line 3: the row is larger than the limit of 64 bytes per row",
        SMALL,
        id="jsonl-line-over-the-row-cap",
    ),
    pytest.param(
        "data.csv",
        'text\n"ok"\n"never closed\n' + "more text\n" * 20,
        "data.csv line 3: the row is larger than the limit of 64 bytes per row",
        SMALL,
        id="csv-unclosed-quote-runs-past-the-row-cap",
    ),
    pytest.param(
        "data.json",
        '[{"text": "a"}, {"text": "' + "x" * 100 + '"}]',
        "row 2 of data.json: the row is 104 bytes, above the limit of 64 bytes per row",
        SMALL,
        id="json-row-over-the-row-cap",
    ),
]


@pytest.mark.parametrize(("name", "content", "message", "limits"), HOSTILE_TEXT)
def test_hostile_text_files_name_the_line(
    tmp_path: Path, name: str, content: str, message: str, limits: Limits
) -> None:
    assert refused(write(tmp_path, name, content), limits).message == message


def test_a_line_at_the_row_cap_is_read_and_one_byte_more_is_not(tmp_path: Path) -> None:
    at_cap = '{"text": "' + "x" * 52 + '"}'  # 64 bytes
    assert len(at_cap) == 64
    path = write(tmp_path, "data.jsonl", "\ufeff" + at_cap + "\r\n" + at_cap + "\n")
    assert read(path).line_numbers == (1, 2)  # a byte-order mark and \r\n do not count
    over = write(tmp_path, "over.jsonl", at_cap + "\n" + at_cap.replace("xx", "xxx", 1) + "\n")
    assert refused(over).message.startswith("over.jsonl line 2: the row is larger than the limit")


def test_csv_fields_may_be_as_long_as_the_row_cap(tmp_path: Path) -> None:
    """Python's csv module stops at 128 KiB fields by default; the row cap is what decides."""
    field = "y" * 200_000
    path = write(tmp_path, "data.csv", f"text\n{field}\n")
    assert read(path, Limits(max_row_bytes=1 << 20)).rows == [{"text": field}]


@pytest.mark.parametrize("name", ["one-line.txt", "one-line.jsonl", "one-line.csv"])
def test_a_huge_line_is_refused_without_reading_it_whole(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    first = b'{"text": "a"}\n' if name.endswith(".jsonl") else b"text\n"
    path.write_bytes(first + b"z" * (20 << 20) + b"\n")  # 20 MiB on one line
    tracemalloc.start()
    try:
        error = refused(path, Limits(max_row_bytes=4096))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert error.message == f"{name} line 2: the row is larger than the limit of 4.0 KiB per row"
    assert peak < 1 << 20, f"reading took {peak / 2**20:.1f} MiB of Python memory"


# ---------------------------------------------------------------------------------------------
# Parquet


def dictionary_bomb(path: Path, rows: int, value_bytes: int) -> Path:
    """`rows` rows that all point at one dictionary entry: a tiny file that decodes to rows x value_bytes."""
    entry = pa.array(["x" * value_bytes])
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), entry)
    # No Arrow schema in the file (store_schema=False), as from any other writer: a reader that did not
    # ask for dictionaries would get the rows decoded.
    pq.write_table(pa.table({"text": column}), path, compression="zstd", store_schema=False)
    return path


def test_a_parquet_dictionary_bomb_is_refused_by_its_decoded_size(tmp_path: Path) -> None:
    path = dictionary_bomb(tmp_path / "bomb.parquet", rows=2000, value_bytes=10_000)
    assert path.stat().st_size < 2000  # 20 MB of rows
    limits = Limits(max_dataset_bytes=1 << 20, max_row_bytes=1 << 20)
    assert refused(path, limits).message == (
        "bomb.parquet holds more than the dataset size limit of 1.0 MiB once decompressed"
    )


def test_a_parquet_row_over_the_cap_is_named(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["a", "x" * 100], "n": [1, 2]}), path)
    assert (
        refused(path).message
        == "row 2 of data.parquet: the row is 112 bytes, above the limit of 64 bytes per row"
    )


def test_a_parquet_row_counts_every_use_of_a_dictionary_entry(tmp_path: Path) -> None:
    path = tmp_path / "chats.parquet"
    content = pa.DictionaryArray.from_arrays(pa.array([0, 0, 0], pa.int32()), pa.array(["y" * 30]))
    messages = pa.ListArray.from_arrays(
        pa.array([0, 1, 3], pa.int32()), pa.StructArray.from_arrays([content], names=["content"])
    )
    pq.write_table(pa.table({"messages": messages}), path, store_schema=False)
    # Row 2 holds the 30-byte entry twice: 68 bytes with offsets, though the file stores it once.
    assert (
        refused(path).message
        == "row 2 of chats.parquet: the row is 72 bytes, above the limit of 64 bytes per row"
    )


def test_parquet_nested_deeper_than_a_row_may_be(tmp_path: Path) -> None:
    kind: pa.DataType = pa.int8()
    value: object = 1
    for _ in range(40):
        kind, value = pa.list_(kind), [value]
    path = tmp_path / "deep.parquet"
    pq.write_table(pa.table({"text": ["a"], "deep": pa.array([value], type=kind)}), path)
    assert (
        refused(path).message
        == "deep.parquet: column 'deep' is nested 41 levels deep; a row may nest at most 32 levels"
    )


@pytest.fixture
def datasets_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def test_a_hub_style_dataset_gets_the_same_row_cap(tmp_path: Path, datasets_cache: None) -> None:
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    write(folder, "train.jsonl", '{"text": "a"}\n{"text": "' + "x" * 100 + '"}\n')
    assert refused(folder).message == (
        "row 2 of dataset folder my-dataset (split train): the row is 104 bytes, above the limit of 64 bytes "
        "per row"
    )
