"""Getting a dataset to read: a file downloaded from an https URL, the stored upload inside the job folder,
or a Hub dataset (or local folder) loaded by `datasets`. What comes out is a path or a loaded dataset; its
rows are parsed and checked elsewhere (sources.py, file_readers.py).
"""

from __future__ import annotations

import ast
import os
import re
import tempfile
import urllib.parse
from pathlib import Path, PurePosixPath
from typing import Any

from protocol.errors import UserError
from protocol.job_spec import DatasetSpec, Limits
from protocol.sources import DATASET_SUFFIXES, redact_url
from trainer.data.file_readers import check_suffix
from trainer.data.records import too_large
from trainer.data.url_fetch import FetchPolicy, open_url

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
HUB_HINT = (
    "check the dataset id (owner/name); for a private or gated dataset set HF_TOKEN to a token of an "
    "account with access; or give an https:// URL or the file itself instead"
)


def upload_path(source: str, job_dir: Path | None, label: str | None) -> Path:
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
    schemes and redirects may be followed, and for how long: trainer/data/url_fetch.py)."""
    shown = redact_url(url)
    with open_url(url, FetchPolicy.from_limits(limits)) as response:
        download_dir.mkdir(parents=True, exist_ok=True)
        # The URL given, else the one a redirect led to (a download link to a named file), else the type.
        suffix = _url_suffix((url, response.target.url), response.content_type)
        check_suffix(suffix, shown)
        if response.length is not None and response.length > limits.max_dataset_bytes:
            raise too_large(shown, response.length, limits)
        handle, name = tempfile.mkstemp(prefix="dataset-", suffix=suffix, dir=download_dir)
        path = Path(name)
        try:
            with os.fdopen(handle, "wb") as out:
                total = 0
                for chunk in response.chunks():
                    total += len(chunk)
                    if total > limits.max_dataset_bytes:
                        raise too_large(shown, None, limits)
                    out.write(chunk)
        except BaseException:
            path.unlink(missing_ok=True)  # never leave a partial download behind
            raise
    return path


def _url_suffix(urls: tuple[str, ...], content_type: str) -> str:
    paths = [PurePosixPath(urllib.parse.unquote(urllib.parse.urlsplit(url).path)) for url in urls]
    suffixes = [path.suffix.lower() for path in paths]
    known = [suffix for suffix in suffixes if suffix in DATASET_SUFFIXES]
    return known[0] if known else CONTENT_TYPES.get(content_type, suffixes[0])


# ---------------------------------------------------------------------------------------------
# The Hugging Face Hub


def load_hub_dataset(path: str, source: str, spec: DatasetSpec, origin: str) -> Any:
    """datasets.load_dataset(path): a Hub dataset, or a local folder of data files; `source` names it in
    errors, and `origin` is the dataset as messages name it."""
    import datasets  # slow to import: only the Hub path pays for it
    from datasets.exceptions import DatasetsError
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return datasets.load_dataset(path, name=spec.config, split=spec.split)
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
            f"dataset {source} not found on the Hub or not reachable ({cause})", HUB_HINT
        ) from error
    except DatasetsError as error:
        raise UserError(
            f"could not read {origin}: {error}", "check the dataset's files on the Hub"
        ) from error


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
