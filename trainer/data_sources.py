"""Reading a dataset's raw rows from a local file, an https URL or the Hugging Face Hub.

Owns choosing the source; each file type's reader (file_readers.py) and the caps it applies while reading
(records.py) live apart.
"""

from __future__ import annotations

import ast
import http.client
import ipaddress
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path, PurePosixPath
from typing import Any

from trainer.errors import UserError
from trainer.file_readers import EXTENSIONS, read_file
from trainer.file_readers import check_suffix as _check_suffix
from trainer.parquet_reader import BATCH_ROWS, check_schema, read_batches
from trainer.protocol import DatasetSpec, Limits
from trainer.records import Records
from trainer.records import too_large as _too_large
from trainer.records import too_many_rows as _too_many_rows

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
DOWNLOAD_TIMEOUT_S = 60
_CHUNK_BYTES = 1 << 16
_HUB_HINT = (
    "check the dataset id (owner/name); for a private or gated dataset set HF_TOKEN to a token of an "
    "account with access; or pass a local file or an https:// URL instead"
)


def read_records(spec: DatasetSpec, download_dir: Path, limits: Limits) -> Records:
    """Read every row of the dataset `spec` names; raise UserError for anything the person must fix."""
    source = spec.source.strip()
    if "://" in source:
        records = read_file(download(source, download_dir, limits), spec.label or source, limits)
    elif _looks_local(source):
        path = Path(source).expanduser()
        # A folder of data files is what datasets.load_dataset reads best; it parses data, never code.
        if path.is_dir():
            records = _read_hub(source, spec, limits, label=f"dataset folder {path.name}")
        else:
            records = read_file(path, spec.label or path.name, limits)
    else:
        records = _read_hub(source, spec, limits, label=f"Hub dataset {source}")
    if not records.rows:
        raise UserError(f"{records.origin} has no rows", "add at least one example to the dataset")
    if len(records.rows) > limits.max_rows:
        raise _too_many_rows(records.origin, len(records.rows), limits)
    return records


def _looks_local(source: str) -> bool:
    path, prefixes = Path(source).expanduser(), ("/", "./", "../", "~", ".\\")
    return path.exists() or source.startswith(prefixes) or path.suffix.lower() in EXTENSIONS


# ---------------------------------------------------------------------------------------------
# URLs


def download(url: str, download_dir: Path, limits: Limits) -> Path:
    """Stream `url` into a new file under `download_dir`, refusing it past the size limit."""
    _check_url(url)
    opener = urllib.request.build_opener(_CheckedRedirects())
    if _is_loopback(urllib.parse.urlsplit(url).hostname):
        # A proxy from the environment cannot reach this machine's loopback; talk to it directly.
        opener = urllib.request.build_opener(_CheckedRedirects(), urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, headers={"User-Agent": "qlora-bot"})
    download_dir.mkdir(parents=True, exist_ok=True)
    try:
        with opener.open(request, timeout=DOWNLOAD_TIMEOUT_S) as response:
            suffix = _url_suffix(url, response.headers.get_content_type())
            _check_suffix(suffix, url)
            length = response.headers.get("Content-Length", "")
            if length.isdigit() and int(length) > limits.max_dataset_bytes:
                raise _too_large(url, int(length), limits)
            handle, name = tempfile.mkstemp(prefix="dataset-", suffix=suffix, dir=download_dir)
            path = Path(name)
            try:
                with os.fdopen(handle, "wb") as out:
                    total = 0
                    while chunk := response.read(_CHUNK_BYTES):
                        total += len(chunk)
                        if total > limits.max_dataset_bytes:
                            raise _too_large(url, None, limits)
                        out.write(chunk)
            except BaseException:
                path.unlink(missing_ok=True)  # never leave a partial download behind
                raise
    except urllib.error.HTTPError as error:
        raise UserError(
            f"{url}: download failed with HTTP {error.code} {error.reason}",
            "check the URL; a private file needs a public or pre-signed link",
        ) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        raise UserError(
            f"{url}: download failed ({reason})", "check the URL and that its server is reachable"
        ) from None
    return path


def _check_url(url: str) -> None:
    try:
        parts = urllib.parse.urlsplit(url)
        scheme, host = parts.scheme.lower(), parts.hostname
    except ValueError as error:  # e.g. an unclosed [ in an IPv6 host
        raise UserError(f"{url}: not a valid URL ({error})", "check the URL") from None
    if scheme == "https" and host:
        return
    if scheme == "http" and _is_loopback(host):
        return  # tests and local tooling serve plain http on this machine only
    if scheme == "http":
        raise UserError(f"{url}: plain http:// URLs are refused", "use the https:// address of the file")
    raise UserError(
        f"{url}: unsupported URL scheme {scheme!r}",
        "give an https:// URL, a Hub dataset id or upload the file",
    )


def _is_loopback(host: str | None) -> bool:
    # Only a literal address or "localhost": resolving the name would itself reach the network.
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect must follow the same scheme rules as the URL the person gave."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        _check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _url_suffix(url: str, content_type: str) -> str:
    suffix = PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)).suffix.lower()
    if suffix in EXTENSIONS:
        return suffix
    return CONTENT_TYPES.get(content_type, suffix)


# ---------------------------------------------------------------------------------------------
# The Hugging Face Hub


def _read_hub(source: str, spec: DatasetSpec, limits: Limits, label: str) -> Records:
    config = f", config {spec.config}" if spec.config else ""
    origin = f"{label}{config} (split {spec.split})"
    import datasets  # slow to import: only the Hub path pays for it
    from datasets.exceptions import DatasetsError
    from huggingface_hub.errors import HfHubHTTPError

    try:
        dataset = datasets.load_dataset(source, name=spec.config, split=spec.split)
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
    # Batch by batch with the caps of a Parquet file: the Arrow cache is memory-mapped, its Python rows
    # are not.
    check_schema(dataset.data.schema, origin)
    batches = (
        batch
        for table in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)
        for batch in table.to_batches()
    )
    return read_batches(batches, origin, limits)


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
