"""The adapter record as published (qlora_bot.json on the Hub): built from an allow-list of the fields a
reader can use to load, judge or reproduce the adapter. Everything else stays on this machine: the job
folder, cache and checkpoint paths, local folders, URL credentials, and any field a later version adds
until someone decides it is public.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from protocol.sources import redact_url, source_kind

# Field names per level of the record (trainer/training/worker.py writes it); a name missing here is left out.
_TOP = ("data_format", "prompt_style", "chat_template_source")
_SPEC = ("base_revision", "name")
_DATASET = ("format", "config", "split")
_LORA = ("r", "alpha", "dropout", "target_modules")
_TRAINING = (
    "epochs",
    "max_steps",
    "learning_rate",
    "warmup",
    "scheduler",
    "seed",
    "batch_size",
    "grad_accum",
    "max_length",
    "packing",
    "gradient_checkpointing",
    "memory_limit_gib",
    "fused_kernels",
    "max_grad_norm",
    "weight_decay",
    "eval_fraction",
)
_RUNTIME = (
    "device",
    "compute_dtype",
    "optimizer",
    "torch",
    "gradient_checkpointing",
    "micro_step",
    "fused_kernels",
)


def public_record(record: dict[str, Any]) -> dict[str, Any]:
    """The allow-listed part of a saved adapter record. A local base model or dataset keeps only its
    file name, a dataset URL loses its query, fragment and user info (signed URLs carry credentials
    there); a Hub id stays as it is, since it is how the adapter is loaded and its data found."""
    public = _pick(record, _TOP)
    spec = _mapping(record.get("spec"))
    if spec:
        out = _pick(spec, _SPEC)
        if isinstance(spec.get("base_model"), str):
            out["base_model"] = public_reference(spec["base_model"])
        dataset = _mapping(spec.get("dataset"))
        if dataset:
            out["dataset"] = _pick(dataset, _DATASET)
            if isinstance(dataset.get("source"), str):
                source = dataset["source"]
                # An upload's place in its job folder has the shape of a Hub id: by its kind, it is a file.
                local = dataset.get("kind") in ("upload", "file")
                out["dataset"]["source"] = PurePath(source).name if local else public_reference(source)
        for name, fields in (("lora", _LORA), ("training", _TRAINING)):
            if _mapping(spec.get(name)):
                out[name] = _pick(spec[name], fields)
        public["spec"] = out
    if _mapping(record.get("runtime")):
        public["runtime"] = _pick(record["runtime"], _RUNTIME)
    return public


def public_reference(reference: str) -> str:
    """A model or dataset reference as a stranger may see it: a URL without its secrets, a local path
    reduced to its last part, anything else (a Hub id) unchanged."""
    kind = source_kind(reference)
    if kind == "url":
        return redact_url(reference)
    if kind == "path" or reference.startswith(".") or PurePath(reference).is_absolute():
        return PurePath(reference).name
    return reference


def _pick(mapping: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    """The listed fields whose values are plain JSON scalars or lists of them (no nested structures:
    a future nested field is a new decision, not a silent passenger)."""
    return {name: mapping[name] for name in fields if name in mapping and _plain(mapping[name])}


def _plain(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(_plain(item) and not isinstance(item, list | tuple) for item in value)
    return value is None or isinstance(value, str | int | float | bool)


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
