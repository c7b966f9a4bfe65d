"""trainer.data.sources: local files of every type, loopback URLs, and the Hub's offline failure path."""

from __future__ import annotations

import dataclasses
import http.server
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protocol.errors import UserError
from protocol.job_spec import DatasetSpec, Limits
from trainer.data.records import Records
from trainer.data.sources import read_records

LIMITS = Limits(max_dataset_bytes=1 << 20, max_rows=1000)


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8")
    else:
        path.write_bytes(content)
    return path


def read(source: str | Path, tmp_path: Path, limits: Limits = LIMITS, **spec: str) -> Records:
    """A local path is read as the CLI names it (kind "file"); anything else by its default kind."""
    if Path(source).is_absolute():
        spec.setdefault("kind", "file")
    return read_records(DatasetSpec(source=str(source), **spec), tmp_path / "downloads", limits)


def user_error(source: str | Path, tmp_path: Path, limits: Limits = LIMITS, **spec: str) -> UserError:
    with pytest.raises(UserError) as caught:
        read(source, tmp_path, limits, **spec)
    assert caught.value.hint, "every user error says what to do"
    return caught.value


@pytest.fixture
def no_remote_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail any name lookup that is not loopback, and record it: proves no connection was attempted."""
    attempts: list[str] = []
    real = socket.getaddrinfo

    def guarded(host: object, *args: object, **kwargs: object) -> object:
        if host not in ("127.0.0.1", "localhost", "::1"):
            attempts.append(str(host))
            raise OSError(f"test blocked a network lookup of {host}")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return attempts


# ---------------------------------------------------------------------------------------------
# Local files


def test_jsonl_rows_keep_their_line_numbers(tmp_path: Path) -> None:
    path = write(tmp_path, "data.jsonl", '{"text": "a"}\n\n  \n{"text": "b"}\r\n{"text": "c\u2028d"}')
    records = read(path, tmp_path)
    assert records.rows == [{"text": "a"}, {"text": "b"}, {"text": "c\u2028d"}]
    assert records.origin == "data.jsonl"
    assert records.line_numbers == (1, 4, 5)
    assert records.where(1) == "data.jsonl line 4"


def test_json_list_and_wrapped_list(tmp_path: Path) -> None:
    rows = [{"text": "a"}, {"text": "b"}]
    assert read(write(tmp_path, "list.json", json.dumps(rows)), tmp_path).rows == rows
    wrapped = write(tmp_path, "wrapped.json", json.dumps({"version": 2, "data": rows}))
    records = read(wrapped, tmp_path)
    assert records.rows == rows
    assert records.line_numbers is None
    assert records.where(1) == "row 2 of wrapped.json"


def test_csv_values_are_strings_and_rows_know_their_first_line(tmp_path: Path) -> None:
    content = '\ufeffprompt,completion\n1+1,2\n\n"multi\nline",x\nlast,"a, b"\n'
    records = read(write(tmp_path, "data.csv", content), tmp_path)
    assert records.rows == [
        {"prompt": "1+1", "completion": "2"},
        {"prompt": "multi\nline", "completion": "x"},
        {"prompt": "last", "completion": "a, b"},
    ]
    assert records.line_numbers == (2, 4, 6)


def test_parquet(tmp_path: Path) -> None:
    path = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["a", "b"], "n": [1, 2]}), path)
    records = read(path, tmp_path)
    assert records.rows == [{"text": "a", "n": 1}, {"text": "b", "n": 2}]
    assert records.where(0) == "row 1 of data.parquet"


def test_txt_is_one_text_example_per_non_empty_line(tmp_path: Path) -> None:
    records = read(write(tmp_path, "corpus.txt", "first line\n\n   \nsecond line\n"), tmp_path)
    assert records.rows == [{"text": "first line"}, {"text": "second line"}]
    assert records.line_numbers == (1, 4)


def test_a_relative_file_path_is_read_where_the_worker_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "data.jsonl", '{"text": "a"}\n')
    monkeypatch.chdir(tmp_path)
    assert read("data.jsonl", tmp_path, kind="file").rows == [{"text": "a"}]


GOOD_LINES = "".join(f'{{"text": "row {n}"}}\n' for n in range(1, 17))

BAD_FILES = [
    pytest.param(
        "data.jsonl",
        GOOD_LINES + '{"text": "a" "b"}\n',
        "data.jsonl line 17: not valid JSON (Expecting ',' delimiter at column 14)",
        id="jsonl-malformed-line-17",
    ),
    pytest.param(
        "data.jsonl",
        '{"text": "a"}\n[1, 2]\n',
        "data.jsonl line 2: expected a JSON object, got a list",
        id="jsonl-not-an-object",
    ),
    pytest.param(
        "data.json",
        '[\n  {"text": "a"},\n  {"text": "b"}\n  {"text": "c"}\n]',
        "data.json line 4 column 3: not valid JSON (Expecting ',' delimiter)",
        id="json-syntax-error",
    ),
    pytest.param(
        "data.json",
        '[{"text": "a"}, "b"]',
        "row 2 of data.json: expected a JSON object, got a string",
        id="json-item-not-an-object",
    ),
    pytest.param(
        "data.json",
        '{"train": [], "test": []}',
        "data.json: expected a list of objects, or an object with exactly one list of rows "
        "(found an object with 2 list fields)",
        id="json-object-without-one-list",
    ),
    pytest.param(
        "data.json", '"text"', "data.json: expected a list of objects, got a string", id="json-scalar"
    ),
    pytest.param(
        "data.jsonl",
        b'{"text": "ok"}\n{"text": "caf\xe9"}\n',
        "data.jsonl line 2: not valid UTF-8 (byte 0xe9)",
        id="bad-utf8",
    ),
    pytest.param(
        "data.csv",
        "prompt,completion\na,b\nc,d,e\n",
        "data.csv line 3: 3 values but the header has 2 columns",
        id="csv-extra-value",
    ),
    pytest.param(
        "data.csv",
        "text,text\na,b\n",
        "data.csv line 1: column 'text' appears twice",
        id="csv-duplicate-column",
    ),
    pytest.param("data.jsonl", "", "data.jsonl has no rows", id="empty-file"),
    pytest.param("data.jsonl", "\n  \n", "data.jsonl has no rows", id="blank-lines-only"),
    pytest.param("data.csv", "prompt,completion\n", "data.csv has no rows", id="csv-header-only"),
    pytest.param("data.json", "[]", "data.json has no rows", id="json-empty-list"),
    pytest.param(
        "data.xlsx",
        "whatever",
        "data.xlsx: unsupported file type .xlsx",
        id="unknown-extension",
    ),
    pytest.param("README", "text", "README: unsupported file type (no extension)", id="no-extension"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_FILES)
def test_bad_files_name_file_and_line(tmp_path: Path, name: str, content: str | bytes, message: str) -> None:
    assert user_error(write(tmp_path, name, content), tmp_path).message == message


def test_unknown_extension_hint_names_the_accepted_ones(tmp_path: Path) -> None:
    error = user_error(write(tmp_path, "data.xlsx", "x"), tmp_path)
    assert error.hint.startswith("use one of .jsonl, .json, .csv, .parquet, .txt")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jsonl"
    assert user_error(path, tmp_path).message == f"dataset file not found: {path}"


def test_file_over_the_size_cap(tmp_path: Path) -> None:
    path = write(tmp_path, "data.jsonl", "x" * 2048)
    error = user_error(path, tmp_path, Limits(max_dataset_bytes=1024, max_rows=10))
    assert error.message == "data.jsonl is 2.0 KiB, above the dataset size limit of 1.0 KiB"


def test_too_many_rows(tmp_path: Path) -> None:
    limits = Limits(max_dataset_bytes=1 << 20, max_rows=2)
    path = write(tmp_path, "data.jsonl", '{"text": "a"}\n' * 3)
    assert user_error(path, tmp_path, limits).message == "data.jsonl has 3 rows, above the limit of 2"
    parquet = tmp_path / "data.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"]}), parquet)
    assert user_error(parquet, tmp_path, limits).message == "data.parquet has 3 rows, above the limit of 2"


def test_corrupt_parquet(tmp_path: Path) -> None:
    error = user_error(write(tmp_path, "data.parquet", b"not parquet at all"), tmp_path)
    assert error.message.startswith("data.parquet: not a readable Parquet file (")


# ---------------------------------------------------------------------------------------------
# URLs, against a loopback server that the admin's allow-list opens to plain http (tests/test_url_fetch.py
# covers what is refused without it)

URL_LIMITS = Limits(max_dataset_bytes=1 << 20, max_rows=1000, allowed_url_hosts=("127.0.0.1",))
JSONL_BODY = b'{"text": "one"}\n{"text": "two"}\n'


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/data.jsonl":
            self._reply(200, JSONL_BODY, "application/octet-stream")
        elif self.path == "/api/rows?page=1":
            self._reply(200, JSONL_BODY, "application/x-ndjson")
        elif self.path == "/big-declared.jsonl":
            self._reply(200, b"x" * 4096, "application/octet-stream")
        elif self.path == "/big.jsonl":
            # No Content-Length: the size only shows while streaming, so a partial file gets written.
            self.send_response(200)
            self.end_headers()
            for _ in range(8):
                self.wfile.write(b'{"text": "' + b"y" * 500 + b'"}\n')
        elif self.path == "/redirect.jsonl":
            self.send_response(302)
            self.send_header("Location", "http://example.com/data.jsonl")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._reply(404, b"not here", "text/plain")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_url_download_is_parsed_with_the_url_as_origin(tmp_path: Path, server: str) -> None:
    url = f"{server}/data.jsonl"
    records = read(url, tmp_path, URL_LIMITS)
    assert records.rows == [{"text": "one"}, {"text": "two"}]
    assert records.where(1) == f"{url} line 2"
    [downloaded] = (tmp_path / "downloads").iterdir()
    assert downloaded.suffix == ".jsonl"


def test_url_without_extension_uses_the_content_type(tmp_path: Path, server: str) -> None:
    assert read(f"{server}/api/rows?page=1", tmp_path, URL_LIMITS).rows == [{"text": "one"}, {"text": "two"}]


def test_url_404(tmp_path: Path, server: str) -> None:
    url = f"{server}/missing.jsonl"
    assert user_error(url, tmp_path, URL_LIMITS).message == f"{url}: download failed with HTTP 404 Not Found"


@pytest.mark.parametrize("name", ["big.jsonl", "big-declared.jsonl"])
def test_oversize_download_is_refused_and_removed(tmp_path: Path, server: str, name: str) -> None:
    url = f"{server}/{name}"
    error = user_error(url, tmp_path, dataclasses.replace(URL_LIMITS, max_dataset_bytes=1024, max_rows=10))
    expected = "is larger than" if name == "big.jsonl" else "is 4.0 KiB, above"
    assert error.message == f"{url} {expected} the dataset size limit of 1.0 KiB"
    assert list((tmp_path / "downloads").iterdir()) == []


def test_redirect_to_plain_http_elsewhere_is_refused(
    tmp_path: Path, server: str, no_remote_network: list[str]
) -> None:
    error = user_error(f"{server}/redirect.jsonl", tmp_path, URL_LIMITS)
    assert error.message == (
        f"http://example.com/data.jsonl (redirected from {server}/redirect.jsonl): "
        "plain http:// URLs are refused"
    )
    assert no_remote_network == []


def test_connection_refused(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port that nothing listens on once this closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.jsonl"
    assert user_error(url, tmp_path, URL_LIMITS).message.startswith(f"{url}: download failed (")


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.com/data.jsonl", "http://example.com/data.jsonl: plain http:// URLs are refused"),
        ("http://10.0.0.1/data.jsonl", "http://10.0.0.1/data.jsonl: plain http:// URLs are refused"),
        ("ftp://example.com/data.jsonl", "ftp://example.com/data.jsonl: unsupported URL scheme 'ftp'"),
        ("file:///etc/passwd.txt", "file:///etc/passwd.txt: unsupported URL scheme 'file'"),
        ("https://[::1/data.jsonl", "https://[::1/data.jsonl: not a valid URL (Invalid IPv6 URL)"),
    ],
)
def test_refused_urls_make_no_connection(
    tmp_path: Path, no_remote_network: list[str], url: str, message: str
) -> None:
    assert user_error(url, tmp_path).message == message
    assert no_remote_network == []
    assert not (tmp_path / "downloads").exists()


# ---------------------------------------------------------------------------------------------
# The Hub: only paths that need no network


@pytest.fixture
def offline_hub(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, no_remote_network: list[str]) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    # Both libraries read these once at import; another test may already have imported them.
    import datasets.config
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def test_hub_dataset_unreachable_offline(
    tmp_path: Path, offline_hub: None, no_remote_network: list[str]
) -> None:
    error = user_error("someone/no-such-dataset", tmp_path)
    assert error.message.startswith("dataset someone/no-such-dataset not found on the Hub or not reachable (")
    assert "HF_TOKEN" in error.hint
    assert no_remote_network == []


def test_local_dataset_folder_goes_through_datasets(tmp_path: Path, offline_hub: None) -> None:
    folder = tmp_path / "my-dataset"
    folder.mkdir()
    write(folder, "train.jsonl", '{"text": "a"}\n{"text": "b"}\n')
    records = read(folder, tmp_path)
    assert records.rows == [{"text": "a"}, {"text": "b"}]
    assert records.where(1) == "row 2 of dataset folder my-dataset (split train)"
    error = user_error(folder, tmp_path, split="validation")
    assert error.message == f"dataset {folder} has no split 'validation' (available: train)"
