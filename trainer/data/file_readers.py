"""Parsing one local data file by its extension, streaming with the caps applied while reading: JSON lines,
text and CSV line by line with a per-line cap, a JSON document bounded by its size, Parquet batch by batch.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from protocol.errors import UserError
from protocol.job_spec import Limits
from protocol.sources import DATASET_SUFFIXES
from trainer.data.json_rows import check_depth, parse_document, parse_line
from trainer.data.parquet_reader import read_parquet
from trainer.data.records import (
    Records,
    RowCollector,
    json_type,
    not_an_object,
    row_too_large,
    too_large,
)

_BOM = b"\xef\xbb\xbf"  # spreadsheet programs start a CSV with it


def read_file(path: Path, origin: str, limits: Limits) -> Records:
    """Parse one local file by its extension; `origin` is the name that error messages use."""
    if not path.is_file():
        raise UserError(f"dataset file not found: {path}", "check the path, or upload the file again")
    suffix = path.suffix.lower()
    check_suffix(suffix, origin)
    size = path.stat().st_size
    if size > limits.max_dataset_bytes:
        raise too_large(origin, size, limits)
    if suffix == ".parquet":
        return read_parquet(path, origin, limits)
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".txt": _read_txt}
    with path.open("rb") as handle:
        return readers[suffix](handle, origin, limits)


def check_suffix(suffix: str, origin: str) -> None:
    if suffix not in DATASET_SUFFIXES:
        raise UserError(
            f"{origin}: unsupported file type {suffix or '(no extension)'}",
            f"use one of {', '.join(DATASET_SUFFIXES)} "
            "(rename the file if its content already is one of them)",
        )


def _read_jsonl(handle: IO[bytes], origin: str, limits: Limits) -> Records:
    collector = RowCollector(origin, limits, numbered=True)
    for number, line in _lines(handle, origin, limits):
        if not line.strip():
            continue
        where = f"{origin} line {number}"
        value = parse_line(line, where)
        if not isinstance(value, dict):
            raise not_an_object(where, value)
        collector.add(value, number)
    return collector.records()


def _read_txt(handle: IO[bytes], origin: str, limits: Limits) -> Records:
    collector = RowCollector(origin, limits, numbered=True)
    for number, line in _lines(handle, origin, limits):
        if line.strip():
            collector.add({"text": line}, number)
    return collector.records()


def _read_json(handle: IO[bytes], origin: str, limits: Limits) -> Records:
    # One document cannot be parsed in pieces: its size (checked before opening, and again here in
    # case the file grew) is what bounds the parse.
    data = handle.read(limits.max_dataset_bytes + 1)
    if len(data) > limits.max_dataset_bytes:
        raise too_large(origin, None, limits)
    text = _decode(data.removeprefix(_BOM), origin)
    del data
    value = parse_document(text, origin)
    del text
    if isinstance(value, dict):
        # {"version": 1, "data": [...]}: exported datasets often wrap their rows in one list field.
        lists = [key for key, item in value.items() if isinstance(item, list)]
        if len(lists) != 1:
            raise UserError(
                f"{origin}: expected a list of objects, or an object with exactly one list of rows "
                f"(found an object with {len(lists)} list fields)",
                "make the file one JSON list of row objects",
            )
        value = value[lists[0]]
    if not isinstance(value, list):
        raise UserError(
            f"{origin}: expected a list of objects, got {json_type(value)}",
            "make the file one JSON list of row objects",
        )
    collector = RowCollector(origin, limits, numbered=False)
    for index, row in enumerate(value):
        where = f"row {index + 1} of {origin}"
        if not isinstance(row, dict):
            raise not_an_object(where, row)
        collector.check_row_size(check_depth(row, where), where)
        collector.add(row)
    return collector.records()


def _read_csv(handle: IO[bytes], origin: str, limits: Limits) -> Records:
    # The module's default field limit (128 KiB) would refuse rows the per-row cap allows; a field can
    # never be larger than its row, which _CsvLines caps.
    csv.field_size_limit(max(limits.max_row_bytes, 1))
    lines = _CsvLines(handle, origin, limits)
    # csv.reader rather than DictReader: DictReader skips blank lines inside next(), which hides the
    # line a row starts on; here each record starts one line after the previous one ended.
    reader = csv.reader(lines)
    collector = RowCollector(origin, limits, numbered=True)
    header: list[str] | None = None
    end = 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
            lines.record_ended()
            if not fields:
                continue
            if header is None:
                twice = [name for name in fields if fields.count(name) > 1]
                if twice:
                    raise UserError(f"{origin} line {start}: column {twice[0]!r} appears twice", "rename one")
                header = fields
            elif len(fields) != len(header):
                raise UserError(
                    f"{origin} line {start}: {len(fields)} values but the header has {len(header)} columns",
                    "quote values that contain commas or newlines, and give every row one value per column",
                )
            else:
                collector.add(dict(zip(header, fields, strict=True)), start)
    except csv.Error as error:
        raise UserError(
            f"{origin} line {reader.line_num}: not valid CSV ({error})", "fix the CSV there"
        ) from None
    return collector.records()


class _CsvLines:
    """The file's lines for csv.reader, refusing a record (which may span lines) past the per-row cap."""

    def __init__(self, handle: IO[bytes], origin: str, limits: Limits) -> None:
        self.lines = _lines(handle, origin, limits, keep_ends=True)
        self.origin = origin
        self.limits = limits
        self.record_bytes = 0
        self.record_start = 1
        self.last = 0

    def __iter__(self) -> _CsvLines:
        return self

    def __next__(self) -> str:
        number, line = next(self.lines)
        self.record_bytes += len(line)
        if self.record_bytes > self.limits.max_row_bytes:
            # An unclosed quote makes the rest of the file one record: this names where it starts.
            raise row_too_large(f"{self.origin} line {self.record_start}", None, self.limits)
        self.last = number
        return line

    def record_ended(self) -> None:
        self.record_bytes = 0
        self.record_start = self.last + 1


def _lines(
    handle: IO[bytes], origin: str, limits: Limits, keep_ends: bool = False
) -> Iterator[tuple[int, str]]:
    """(line number, text) for each line, never reading more than one line's cap into memory.

    Lines end at "\\n" only (and "\\r\\n"): not str.splitlines(), which also splits on U+2028 and other
    separators that JSON strings may hold."""
    cap = limits.max_row_bytes
    number = total = 0
    while True:
        # The line, its "\r\n", a byte-order mark, and a byte more to tell that it is too long.
        raw = handle.readline(cap + 6)
        if not raw:
            return
        number, total = number + 1, total + len(raw)
        if total > limits.max_dataset_bytes:  # checked before opening; this covers a file still growing
            raise too_large(origin, None, limits)
        if number == 1 and raw.startswith(_BOM):
            raw = raw[len(_BOM) :]
        body = raw.removesuffix(b"\n").removesuffix(b"\r")
        if len(body) > cap:
            raise row_too_large(f"{origin} line {number}", None, limits)
        yield number, _decode(raw if keep_ends else body, origin, number)


def _decode(data: bytes, origin: str, line: int | None = None) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        number = line if line is not None else data.count(b"\n", 0, error.start) + 1
        raise UserError(
            f"{origin} line {number}: not valid UTF-8 (byte 0x{data[error.start]:02x})",
            "save the file with UTF-8 encoding",
        ) from None
