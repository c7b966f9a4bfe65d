"""Reading a dataset's raw rows from where its kind says: the Hugging Face Hub, an https URL, an upload in
the job folder, or (the CLI only) a local file or folder.

Owns choosing the source; each file type's reader (file_readers.py), the caps applied while reading
(records.py) and the URL fetch (url_fetch.py) live apart.
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
import urllib.parse
from pathlib import Path, PurePosixPath

from protocol.errors import UserError
from protocol.job_spec import DatasetSpec, Limits
from protocol.sources import hub_id_problem, redact_url
from trainer.file_readers import EXTENSIONS, read_file
from trainer.file_readers import check_suffix as _check_suffix
from trainer.parquet_reader import BATCH_ROWS, check_schema, read_batches
from trainer.records import Records
from trainer.records import too_large as _too_large
from trainer.records import too_many_rows as _too_many_rows
from trainer.url_fetch import FetchPolicy, open_url

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
