"""Tokenized datasets kept between jobs: the same rows, tokenizer, template and length tokenize once.

A retried attempt, a resumed job or a second run on the same data with another learning rate would
otherwise tokenize every row again before the GPU does anything (minutes on a large chat dataset).
Entries are keyed by everything the result depends on: the rows' content, the tokenizer's full state
(vocabulary, merges, special tokens), the chat template, max_length and this module's format version.
They are NumPy archives written atomically; the least recently used beyond MAX_ENTRIES are deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trainer.data.tokenization import TokenizedRows

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # bump when tokenize_examples changes what it produces
MAX_ENTRIES = 16
SUFFIX = ".tokens.npz"


def cache_key(
    rows: list[dict[str, Any]], data_format: str, tokenizer: Any, chat_template: str, max_length: int
) -> str:
    digest = hashlib.sha256()
    header = {"version": FORMAT_VERSION, "format": data_format, "template": chat_template, "max": max_length}
    digest.update(json.dumps(header, sort_keys=True).encode())
    digest.update(_tokenizer_state(tokenizer).encode())
    for row in rows:
        digest.update(json.dumps(row, sort_keys=True, default=str).encode() + b"\n")
    return digest.hexdigest()


def tokenized(
    cache_dir: str | None, key: str, tokenize: Callable[[], TokenizedRows]
) -> tuple[TokenizedRows, bool]:
    """The cached rows for `key`, else tokenize() stored under it; and whether the cache had them."""
    if cache_dir is None:
        return tokenize(), False
    folder = Path(cache_dir) / "tokenized"
    path = folder / f"{key}{SUFFIX}"
    cached = _load(path)
    if cached is not None:
        os.utime(path)  # recently used
        return cached, True
    rows = tokenize()
    try:
        _store(folder, path, rows)
    except OSError as error:  # a full or read-only disk costs the cache, never the job
        log.warning("could not cache the tokenized dataset in %s: %s", folder, error)
    return rows, False


def _tokenizer_state(tokenizer: Any) -> str:
    """The fast tokenizer's whole serialized state plus what transformers adds around it."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    core = backend.to_str() if backend is not None else repr(tokenizer)
    extra = {
        "special": {name: str(value) for name, value in sorted(tokenizer.special_tokens_map.items())},
        "bos": getattr(tokenizer, "add_bos_token", None),
        "eos": getattr(tokenizer, "add_eos_token", None),
    }
    return core + json.dumps(extra, sort_keys=True, default=str)


def _load(path: Path) -> TokenizedRows | None:
    if not path.is_file():
        return None
    try:
        with np.load(path) as data:
            offsets = data["offsets"]
            ids = np.split(data["ids"], offsets[1:-1])
            masks = np.split(data["mask"], offsets[1:-1]) if "mask" in data else None
            dropped_too_long, dropped_untrainable = (int(n) for n in data["dropped"])
    except (OSError, ValueError, KeyError) as error:
        log.warning("ignoring the unreadable tokenized-dataset cache entry %s: %s", path, error)
        return None
    return TokenizedRows(
        [row.tolist() for row in ids],
        [row.tolist() for row in masks] if masks is not None else None,
        dropped_too_long,
        dropped_untrainable,
    )


def _store(folder: Path, path: Path, rows: TokenizedRows) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    lengths = [len(ids) for ids in rows.input_ids]
    arrays = {
        "ids": np.fromiter((t for ids in rows.input_ids for t in ids), dtype=np.int32),
        "offsets": np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
        "dropped": np.array([rows.dropped_too_long, rows.dropped_untrainable], dtype=np.int64),
    }
    if rows.completion_mask is not None:
        arrays["mask"] = np.fromiter((m for mask in rows.completion_mask for m in mask), dtype=np.int8)
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
    with partial.open("wb") as out:
        np.savez(out, **arrays)
    partial.replace(path)  # readers see a whole entry or none
    _evict(folder)


def _evict(folder: Path) -> None:
    entries = sorted(folder.glob(f"*{SUFFIX}"), key=lambda entry: entry.stat().st_mtime, reverse=True)
    for stale in entries[MAX_ENTRIES:]:
        stale.unlink(missing_ok=True)
