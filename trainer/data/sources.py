"""Reading a dataset's rows from where its kind says: the Hugging Face Hub, an https URL, an upload in the
job folder, or (the CLI only) a local file or folder.

Owns choosing the source and the caps of a whole dataset; getting its bytes (fetching.py: downloads, the
upload's place, the Hub) and parsing each file type (file_readers.py, parquet_reader.py) live apart.
"""

from __future__ import annotations

from pathlib import Path

from protocol.errors import UserError
from protocol.job_spec import DatasetSpec, Limits
from protocol.sources import hub_id_problem, redact_url
from trainer.data.fetching import HUB_HINT, download, load_hub_dataset, upload_path
from trainer.data.file_readers import read_file
from trainer.data.parquet_reader import BATCH_ROWS, check_schema, read_batches
from trainer.data.records import Records, too_large, too_many_rows


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
        path = upload_path(source, job_dir, spec.label)
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
            raise UserError(problem, HUB_HINT)
        # hf://datasets/ reads the Hub only: a local folder that happens to carry the id's name (where the
        # worker runs, or anywhere else) is never read in its place.
        records = _read_hub(f"hf://datasets/{source}", source, spec, limits, label=f"Hub dataset {source}")
    if not records.rows:
        raise UserError(f"{records.origin} has no rows", "add at least one example to the dataset")
    if len(records.rows) > limits.max_rows:
        raise too_many_rows(records.origin, len(records.rows), limits)
    return records


def _read_hub(path: str, source: str, spec: DatasetSpec, limits: Limits, label: str) -> Records:
    """The rows of the dataset datasets.load_dataset(path) loads, under the caps of a Parquet file."""
    config = f", config {spec.config}" if spec.config else ""
    origin = f"{label}{config} (split {spec.split})"
    dataset = load_hub_dataset(path, source, spec, origin)
    if dataset.num_rows > limits.max_rows:
        raise too_many_rows(origin, dataset.num_rows, limits)
    if dataset.data.nbytes > limits.max_dataset_bytes:
        raise too_large(origin, dataset.data.nbytes, limits)
    # Batch by batch with the caps of a Parquet file: the Arrow cache is memory-mapped, its Python rows
    # are not.
    check_schema(dataset.data.schema, origin)
    batches = (
        batch
        for table in dataset.with_format("arrow").iter(batch_size=BATCH_ROWS)
        for batch in table.to_batches()
    )
    return read_batches(batches, origin, limits)
