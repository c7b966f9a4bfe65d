"""Reading Parquet files, and the Hub's Arrow tables, batch by batch: each batch's decoded size and each
row's are checked against the caps before any of it becomes Python objects.

A few hundred bytes of Parquet can stand for gigabytes of rows (one dictionary entry repeated, or
compressed runs), so neither the file size nor the footer's figures bound what reading costs. Byte
columns stored with a dictionary are read as dictionaries, and a row's size counts each use of an entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from protocol.errors import UserError
from protocol.job_spec import Limits
from trainer.data.json_rows import MAX_DEPTH
from trainer.data.records import Records, RowCollector, row_too_large, too_large_decoded, too_many_rows

# Rows decoded at a time: small enough that a batch of rows at the per-row cap stays modest, large
# enough that Arrow's per-batch overhead does not show on a million short rows.
BATCH_ROWS = 256


def read_parquet(path: Path, origin: str, limits: Limits) -> Records:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        metadata = pq.ParquetFile(path).metadata
        # The footer knows the row count and the decompressed size: refuse before decoding a single row.
        if metadata.num_rows > limits.max_rows:
            raise too_many_rows(origin, metadata.num_rows, limits)
        stored = sum(metadata.row_group(index).total_byte_size for index in range(metadata.num_row_groups))
        if stored > limits.max_dataset_bytes:
            raise too_large_decoded(origin, limits)
        parquet = pq.ParquetFile(path, read_dictionary=_dictionary_columns(metadata))
        check_schema(parquet.schema_arrow, origin)
        batches = parquet.iter_batches(batch_size=BATCH_ROWS, use_threads=False)
        return read_batches(batches, origin, limits)
    except MemoryError:
        raise  # pyarrow's ArrowMemoryError is one: the caller reports the memory limit
    except (pa.ArrowException, OSError) as error:
        raise UserError(
            f"{origin}: not a readable Parquet file ({error})", "check the file is valid Parquet"
        ) from None


def read_batches(batches: Iterable[Any], origin: str, limits: Limits) -> Records:
    """Rows from Arrow record batches, each batch measured against the caps before it is converted."""
    import numpy as np

    collector = RowCollector(origin, limits, numbered=False)
    first = 0
    for batch in batches:
        sizes = row_sizes(batch)
        over = np.flatnonzero(sizes > limits.max_row_bytes)
        if over.size:
            index = int(over[0])
            raise row_too_large(f"row {first + index + 1} of {origin}", int(sizes[index]), limits)
        collector.add_decoded(int(sizes.sum()))
        for row in batch.to_pylist():
            collector.add(row)
        first += batch.num_rows
    return collector.records()


def check_schema(schema: Any, origin: str) -> None:
    """Refuse columns nested deeper than a JSON row may be (json_rows.MAX_DEPTH)."""
    for field in schema:
        depth = _type_depth(field.type)
        if depth > MAX_DEPTH:
            raise UserError(
                f"{origin}: column {field.name!r} is nested {depth} levels deep; "
                f"a row may nest at most {MAX_DEPTH} levels",
                "flatten or drop that column",
            )


def row_sizes(batch: Any) -> Any:
    """The decoded bytes of each row of a record batch (numpy int64), without decoding it."""
    import numpy as np

    total = np.zeros(batch.num_rows, dtype=np.int64)
    for column in batch.columns:
        total += _sizes(column)
    return total


def _sizes(array: Any) -> Any:
    """Per element: bytes of string data, fixed-width values and offsets, with children summed in."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    kind, count = array.type, len(array)
    if pa.types.is_dictionary(kind):
        values = _sizes(array.dictionary)
        indices = array.indices.fill_null(0).to_numpy(zero_copy_only=False)
        return values[indices] if len(values) else np.zeros(count, dtype=np.int64)
    if pa.types.is_string(kind) or pa.types.is_binary(kind) or _is_large_bytes(kind):
        lengths = pc.binary_length(array).fill_null(0).to_numpy(zero_copy_only=False)
        return lengths.astype(np.int64) + 4  # and its offset
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        children = _sizes(array.flatten())
        parents = pc.list_parent_indices(array).to_numpy(zero_copy_only=False)
        summed = np.bincount(parents, weights=children, minlength=count)[:count]
        return summed.astype(np.int64) + 4
    if pa.types.is_struct(kind):
        fields = array.flatten()  # the children as this (possibly sliced) array sees them
        return sum((_sizes(field) for field in fields), np.zeros(count, dtype=np.int64))
    try:
        width = max(kind.bit_width // 8, 1)  # numbers, booleans, dates and times
    except ValueError:  # maps, unions, extensions: their buffers shared out evenly
        return np.full(count, array.nbytes // max(count, 1), dtype=np.int64)
    return np.full(count, width, dtype=np.int64)


def _is_large_bytes(kind: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)


def _type_depth(kind: Any) -> int:
    # Iterative: the footer, not this code, decides how deep a hostile file's schema goes.
    deepest, pending = 0, [(kind, 1)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        pending.extend((item.field(index).type, depth + 1) for index in range(item.num_fields))
    return deepest


def _dictionary_columns(metadata: Any) -> list[str]:
    """Byte columns the file stores with a dictionary: read as dictionaries, they stay as small as stored."""
    found = set()
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        for index in range(row_group.num_columns):
            chunk = row_group.column(index)
            if chunk.has_dictionary_page and chunk.physical_type == "BYTE_ARRAY":
                found.add(chunk.path_in_schema)
    return sorted(found)
