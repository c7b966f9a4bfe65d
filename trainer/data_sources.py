"""Reading a dataset's raw rows from where its kind says: the Hugging Face Hub, an https URL, an upload in
the job folder, or (the CLI only) a local file or folder.

Owns the size and row caps, and error messages that point at the file and line of a bad record.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from trainer.errors import UserError
from trainer.protocol import DatasetSpec, Limits, hub_id_problem, redact_url
from trainer.url_fetch import FetchPolicy, open_url

EXTENSIONS: tuple[str, ...] = (".jsonl", ".json", ".csv", ".parquet", ".txt")
# Used only when a URL's path has no known extension (an API endpoint, a signed download link).
CONTENT_TYPES: dict[str, str] = {
    "application/json": ".json",
    "application/jsonl": ".jsonl",
    "application/x-jsonlines": ".jsonl",
    "application/x-ndjson": ".jsonl",
    "text/csv": ".csv",
    "application/vnd.apache.parquet": ".parquet",
    "application/x-parquet": ".parquet",
}
_HUB_HINT = (
    "check the dataset id (owner/name); for a private or gated dataset set HF_TOKEN to a token of an "
    "account with access; or give an https:// URL or the file itself instead"
)


@dataclass(frozen=True)
class Records:
    """The raw rows of a dataset, with enough provenance to point a person at a bad one."""

    rows: list[dict[str, Any]]
    origin: str  # short human name: "data.jsonl", "https://x/y.csv", "Hub dataset org/name (split train)"
    line_numbers: tuple[int, ...] | None = None  # 1-based file line of each row (jsonl, csv, txt)

    def where(self, index: int) -> str:
        if self.line_numbers is not None:
            return f"{self.origin} line {self.line_numbers[index]}"
        return f"row {index + 1} of {self.origin}"


def read_records(
    spec: DatasetSpec, download_dir: Path, limits: Limits, *, job_dir: Path | None = None
) -> Records:
    """Read every row of the dataset `spec` names, from where its kind allows and nowhere else (an upload
    from inside `job_dir`); raise UserError for anything the person must fix."""
    source = spec.source.strip()
    if spec.kind == "url":
        origin = spec.label or redact_url(source)  # never a signed link's query, nor user:password
        records = read_file(download(source, download_dir, limits), origin, limits)
    elif spec.kind == "upload":
        path = _upload_path(source, job_dir, spec.label)
        records = read_file(path, spec.label or path.name, limits)
    elif spec.kind == "file":  # only the CLI names local paths (DESIGN.md, Security)
        path = Path(source).expanduser()
        # A folder of data files is what datasets.load_dataset reads best; it parses data, never code.
        if path.is_dir():
            records = _read_hub(str(path), source, spec, limits, label=f"dataset folder {path.name}")
        else:
            records = read_file(path, spec.label or path.name, limits)
    else:
        problem = hub_id_problem(source)
        if problem is not None:
            raise UserError(problem, _HUB_HINT)
        # hf://datasets/ reads the Hub only: a local folder that happens to carry the id's name (where the
        # worker runs, or anywhere else) is never read in its place.
        records = _read_hub(f"hf://datasets/{source}", source, spec, limits, label=f"Hub dataset {source}")
    if not records.rows:
        raise UserError(f"{records.origin} has no rows", "add at least one example to the dataset")
    if len(records.rows) > limits.max_rows:
        raise _too_many_rows(records.origin, len(records.rows), limits)
    return records


def _upload_path(source: str, job_dir: Path | None, label: str | None) -> Path:
    """The stored upload, which must lie inside the job folder (its source is relative to it)."""
    if job_dir is None:
        raise ValueError("an upload is read from its job folder, and none was given")
    folder = job_dir.resolve()
    path = (folder / source).resolve()
    if path == folder or not path.is_relative_to(folder):
        raise UserError(
            f"dataset.source {source!r}: an upload must lie inside the job folder", "upload the file again"
        )
    if not path.is_file():
        name = label or PurePosixPath(source).name
        raise UserError(f"the uploaded file {name} is missing from the job folder", "upload the file again")
    return path


# ---------------------------------------------------------------------------------------------
# Files


def read_file(path: Path, origin: str, limits: Limits) -> Records:
    """Parse one local file by its extension; `origin` is the name that error messages use."""
    if not path.is_file():
        raise UserError(f"dataset file not found: {path}", "check the path, or upload the file again")
    suffix = path.suffix.lower()
    _check_suffix(suffix, origin)
    size = path.stat().st_size
    if size > limits.max_dataset_bytes:
        raise _too_large(origin, size, limits)
    if suffix == ".parquet":
        return _read_parquet(path, origin, limits)
    readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".txt": _read_txt}
    return readers[suffix](_decode(path.read_bytes(), origin), origin)


def _check_suffix(suffix: str, origin: str) -> None:
    if suffix not in EXTENSIONS:
        raise UserError(
            f"{origin}: unsupported file type {suffix or '(no extension)'}",
            f"use one of {', '.join(EXTENSIONS)} (rename the file if its content already is one of them)",
        )


def _decode(data: bytes, origin: str) -> str:
    try:
        # utf-8-sig drops the byte-order mark that spreadsheet programs put at the start of a CSV.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise UserError(
            f"{origin} line {line}: not valid UTF-8 (byte 0x{data[error.start]:02x})",
            "save the file with UTF-8 encoding",
        ) from None


def _lines(text: str) -> list[str]:
    # Not str.splitlines(): it also splits on U+2028 and other separators that JSON strings may hold.
    return [line.removesuffix("\r") for line in text.split("\n")]


def _read_jsonl(text: str, origin: str) -> Records:
    rows, numbers = [], []
    for number, line in enumerate(_lines(text), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as error:
            raise UserError(
                f"{origin} line {number}: not valid JSON ({error.msg} at column {error.colno})",
                "each non-blank line of a .jsonl file must be one complete JSON object "
                "(a file holding one JSON list should be named .json)",
            ) from None
        if not isinstance(value, dict):
            raise _not_an_object(f"{origin} line {number}", value)
        rows.append(value)
        numbers.append(number)
    return Records(rows, origin, tuple(numbers))


def _read_json(text: str, origin: str) -> Records:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{origin} line {error.lineno} column {error.colno}: not valid JSON ({error.msg})",
            "fix the JSON syntax there (a missing comma, quote or bracket is the usual cause)",
        ) from None
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
            f"{origin}: expected a list of objects, got {_json_type(value)}",
            "make the file one JSON list of row objects",
        )
    for index, row in enumerate(value):
        if not isinstance(row, dict):
            raise _not_an_object(f"row {index + 1} of {origin}", row)
    return Records(value, origin)


def _read_csv(text: str, origin: str) -> Records:
    # csv.reader rather than DictReader: DictReader skips blank lines inside next(), which hides the
    # line a row starts on; here each record starts one line after the previous one ended.
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[dict[str, Any]] = []
    numbers: list[int] = []
    header: list[str] | None = None
    end = 0
    try:
        for fields in reader:
            start, end = end + 1, reader.line_num
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
                rows.append(dict(zip(header, fields, strict=True)))
                numbers.append(start)
    except csv.Error as error:
        raise UserError(
            f"{origin} line {reader.line_num}: not valid CSV ({error})", "fix the CSV there"
        ) from None
    return Records(rows, origin, tuple(numbers))


def _read_txt(text: str, origin: str) -> Records:
    numbered = [(number, line) for number, line in enumerate(_lines(text), start=1) if line.strip()]
    return Records([{"text": line} for _, line in numbered], origin, tuple(number for number, _ in numbered))


def _read_parquet(path: Path, origin: str, limits: Limits) -> Records:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        # The footer knows the row count: refuse a huge file before decoding a single row.
        if parquet.metadata.num_rows > limits.max_rows:
            raise _too_many_rows(origin, parquet.metadata.num_rows, limits)
        rows = parquet.read().to_pylist()
    except (pa.ArrowException, OSError) as error:
        raise UserError(
            f"{origin}: not a readable Parquet file ({error})", "check the file is valid Parquet"
        ) from None
    return Records(rows, origin)


# ---------------------------------------------------------------------------------------------
# URLs


def download(url: str, download_dir: Path, limits: Limits) -> Path:
    """Stream `url` into a new file under `download_dir`, refusing it past the size limit (which hosts,
    schemes and redirects may be followed, and for how long: trainer/url_fetch.py)."""
    shown = redact_url(url)
    with open_url(url, FetchPolicy.from_limits(limits)) as response:
        download_dir.mkdir(parents=True, exist_ok=True)
        # The URL given, else the one a redirect led to (a download link to a named file), else the type.
        suffix = _url_suffix((url, response.target.url), response.content_type)
        _check_suffix(suffix, shown)
        if response.length is not None and response.length > limits.max_dataset_bytes:
            raise _too_large(shown, response.length, limits)
        handle, name = tempfile.mkstemp(prefix="dataset-", suffix=suffix, dir=download_dir)
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                total = 0
                for chunk in response.chunks():
                    total += len(chunk)
                    if total > limits.max_dataset_bytes:
                        raise _too_large(shown, None, limits)
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)  # never leave a partial download behind
            raise
    return path


def _url_suffix(urls: tuple[str, ...], content_type: str) -> str:
    paths = [PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)) for url in urls]
    suffixes = [path.suffix.lower() for path in paths]
    known = [suffix for suffix in suffixes if suffix in EXTENSIONS]
    return known[0] if known else CONTENT_TYPES.get(content_type, suffixes[0])


# ---------------------------------------------------------------------------------------------
# The Hugging Face Hub


def _read_hub(path: str, source: str, spec: DatasetSpec, limits: Limits, label: str) -> Records:
    """datasets.load_dataset(path): a Hub dataset, or a local folder of data files; `source` names it."""
    config = f", config {spec.config}" if spec.config else ""
    origin = f"{label}{config} (split {spec.split})"
    import datasets  # slow to import: only the Hub path pays for it
    from datasets.exceptions import DatasetsError
    from huggingface_hub.errors import HfHubHTTPError

    try:
        dataset = datasets.load_dataset(path, name=spec.config, split=spec.split)
    except ValueError as error:
        mapped = _hub_value_error(source, spec, error)
        if mapped is None:
            raise  # not about the person's input: reported as an internal error
        raise mapped from error
    except (FileNotFoundError, ConnectionError, TimeoutError, HfHubHTTPError) as error:
        # DatasetNotFoundError, gated/private repos (401/403), LocalEntryNotFoundError and offline mode
        # all land here; the person's next step is the same for each.
        cause = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
        raise UserError(
            f"dataset {source} not found on the Hub or not reachable ({cause})", _HUB_HINT
        ) from error
    except DatasetsError as error:
        raise UserError(
            f"could not read {origin}: {error}", "check the dataset's files on the Hub"
        ) from error
    if dataset.num_rows > limits.max_rows:
        raise _too_many_rows(origin, dataset.num_rows, limits)
    if dataset.data.nbytes > limits.max_dataset_bytes:
        raise _too_large(origin, dataset.data.nbytes, limits)
    return Records(dataset.to_list(), origin)


def _hub_value_error(source: str, spec: DatasetSpec, error: ValueError) -> UserError | None:
    """datasets reports a wrong split or config as a ValueError whose text lists the valid names."""
    text = str(error)
    listed = re.search(r"(?:Should be one of|Available:|available configs:) (\[.*?\])", text)
    available = ", ".join(map(str, ast.literal_eval(listed.group(1)))) if listed else "unknown"
    problems = {
        "Unknown split": f"has no split {spec.split!r}",
        "BuilderConfig": f"has no configuration {spec.config!r}",
        "Config name is missing": "has several configurations and none was chosen",
    }
    for start, problem in problems.items():
        if text.startswith(start):
            return UserError(f"dataset {source} {problem} (available: {available})", "choose one of those")
    return None


# ---------------------------------------------------------------------------------------------
# Messages


def _too_large(origin: str, size: int | None, limits: Limits) -> UserError:
    size_text = f"is {_human(size)}, above" if size is not None else "is larger than"
    return UserError(
        f"{origin} {size_text} the dataset size limit of {_human(limits.max_dataset_bytes)}",
        "use a smaller dataset, or ask an admin to raise the limit",
    )


def _too_many_rows(origin: str, count: int, limits: Limits) -> UserError:
    return UserError(
        f"{origin} has {count:,} rows, above the limit of {limits.max_rows:,}",
        "use fewer rows, or ask an admin to raise the limit",
    )


def _not_an_object(where: str, value: object) -> UserError:
    hint = 'every row must be one JSON object with named fields, e.g. {"text": "..."}'
    return UserError(f"{where}: expected a JSON object, got {_json_type(value)}", hint)


def _human(size: int) -> str:
    value, unit = float(size), "bytes"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{size} bytes" if unit == "bytes" else f"{value:.1f} {unit}"


_JSON_TYPES = {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "a string"}


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), "a list" if isinstance(value, list) else "an object")
