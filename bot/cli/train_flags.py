"""`qlora-bot train`'s flags: each one declared once with the job-spec field it sets, so the parser, the
request it builds, the help's defaults and the error messages (which name spec fields) all agree."""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import JobDefaults
from bot.jobs.requests import CAPPED
from protocol.job_spec import DATASET_FORMATS, SCHEDULERS


@dataclass(frozen=True)
class SpecFlag:
    """A flag that overrides one spec field (`lora.r`); unset, the field keeps config.toml's defaults."""

    flag: str
    field: str
    help: str
    type: Any = None
    choices: tuple[str, ...] | None = None
    unset: str = ""  # what the field's absence means, where config.toml ships it unset

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


# In the order `train -h` lists them. The special ones (--target-modules, --no-packing, the checkpointing
# pair) are parsed by bot/cli/train.py::job_request; the rest go into the spec as they are.
SPEC_FLAGS: tuple[SpecFlag, ...] = (
    SpecFlag("--r", "lora.r", "LoRA rank", int),
    SpecFlag("--alpha", "lora.alpha", "LoRA alpha", int, unset="2 * r"),
    SpecFlag("--dropout", "lora.dropout", "LoRA dropout", float),
    SpecFlag(
        "--target-modules", "lora.target_modules", "comma-separated module names", unset="all linear layers"
    ),
    SpecFlag("--epochs", "training.epochs", "passes over the data", float),
    SpecFlag(
        "--max-steps", "training.max_steps", "optimizer steps (overrides --epochs)", int, unset="--epochs"
    ),
    SpecFlag("--lr", "training.learning_rate", "peak learning rate", float),
    SpecFlag("--warmup", "training.warmup", "warm-up: a fraction below 1, else steps", float),
    SpecFlag("--scheduler", "training.scheduler", "learning-rate schedule", choices=SCHEDULERS),
    SpecFlag("--batch-size", "training.batch_size", "packed rows per micro-step", int),
    SpecFlag("--grad-accum", "training.grad_accum", "micro-steps per optimizer step", int),
    SpecFlag("--max-length", "training.max_length", "tokens per packed row", int),
    SpecFlag("--eval-fraction", "training.eval_fraction", "share of examples held out for eval loss", float),
    SpecFlag("--checkpoint-steps", "training.checkpoint_steps", "save a checkpoint every N steps", int),
    SpecFlag("--seed", "training.seed", "random seed", int),
    SpecFlag(
        "--gradient-checkpointing",
        "training.gradient_checkpointing",
        "recompute activations in the backward pass (auto: on only when memory needs it)",
        choices=("auto", "on", "off"),
    ),
    SpecFlag(
        "--memory-limit-gib",
        "training.memory_limit_gib",
        "plan for at most this much GPU memory (16 fits a 7B job on a 24 GB card)",
        float,
        unset="what is free",
    ),
)
SIMPLE_FLAGS = tuple(
    flag
    for flag in SPEC_FLAGS
    if flag.field not in ("lora.target_modules", "training.gradient_checkpointing")
)
# Spec fields set by flags that are not plain overrides, for the error messages.
OTHER_FIELDS = {
    "base_model": "--base-model",
    "dataset.source": "--dataset",
    "dataset.format": "--format",
    "dataset.config": "--dataset-config",
    "dataset.split": "--split",
    "training.packing": "--no-packing",
    "resume_from": "--resume",
}
FIELD_FLAGS: dict[str, str] = {**{flag.field: flag.flag for flag in SPEC_FLAGS}, **OTHER_FIELDS}


def add_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    defaults = JobDefaults()  # config.toml ships these (tests/test_config.py keeps them in sync)
    train = commands.add_parser(
        "train",
        parents=[common],
        help="fine-tune a base model on a dataset in a worker process",
        description="Run one QLoRA fine-tune with a live progress bar; Ctrl-C cancels at a checkpoint. "
        "Options left out take config.toml's [defaults] (shown as they ship).",
    )
    train.add_argument(
        "--base-model", help=f"Hub model id or local folder ({_default('base_model', defaults, 'name one')})"
    )
    train.add_argument(
        "--dataset",
        required=True,
        help="Hub dataset id, local file (.jsonl .json .csv .parquet .txt) or https URL (required)",
    )
    train.add_argument(
        "--format", choices=DATASET_FORMATS, default="auto", help="dataset format (default: auto, detected)"
    )
    train.add_argument("--dataset-config", help="Hub dataset configuration name (default: none)")
    train.add_argument("--split", default="train", help="Hub dataset split (default: train)")
    train.add_argument("--name", help="adapter name (default: from the dataset's name)")
    for flag in SPEC_FLAGS:
        options: dict[str, Any] = {"help": f"{flag.help} ({_default(flag.field, defaults, flag.unset)})"}
        if flag.type is not None:
            options["type"] = flag.type
        if flag.choices is not None:
            options["choices"] = flag.choices
        train.add_argument(flag.flag, **options)
        if flag.field == "training.seed":  # the boolean switches sit after the values, as they always have
            train.add_argument(
                "--no-packing",
                action="store_true",
                help=f"one example per row ({_default('training.packing', defaults)}: packed)",
            )
    train.add_argument(
        "--no-gradient-checkpointing", action="store_true", help="same as --gradient-checkpointing off"
    )
    train.add_argument(
        "--output",
        type=Path,
        help="job folder: a new or empty folder (default: a new folder under the data directory)",
    )
    train.add_argument(
        "--resume", type=Path, metavar="CHECKPOINT_DIR", help="continue from a checkpoint (default: none)"
    )


def spec_overrides(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The plain flags of one spec section (`lora`, `training`) as the request's overrides (None: unset)."""
    return {
        flag.field.split(".", 1)[1]: getattr(args, flag.dest)
        for flag in SIMPLE_FLAGS
        if flag.field.startswith(section + ".")
    }


def _default(field: str, defaults: JobDefaults, unset: str = "") -> str:
    """`default: config defaults.lora.r = 16`: the effective default is config.toml's, which ships with
    the dataclasses' values; `unset`: what a field that ships unset means."""
    value: Any = defaults
    for part in field.split("."):
        value = getattr(value, part)
    if value is None or value == "":
        return (
            f"default: config defaults.{field}, unset: {unset}"
            if unset
            else f"default: config defaults.{field}"
        )
    elif isinstance(value, bool):
        shown = str(value).lower()
    elif isinstance(value, tuple):
        shown = ",".join(value)
    else:
        shown = f"{value:g}" if isinstance(value, float) else str(value)
    return f"default: config defaults.{field} = {shown}"


# --- error messages: the service and the spec name fields (`lora.r: must be ...`, `r=2000 is above ...`);
# the terminal's user typed flags, so the messages the CLI shows name those.

_FIELD = re.compile(
    r"(?<![\w.-])("
    + "|".join(re.escape(field) for field in sorted(FIELD_FLAGS, key=len, reverse=True))
    + r")(?=: )"
)
_CAPPED_FLAGS = {
    option: FIELD_FLAGS[field]
    for option in CAPPED
    for field in (f"lora.{option}", f"training.{option}")
    if field in FIELD_FLAGS
}
_CAP = re.compile(r"(?<![\w.-])(" + "|".join(map(re.escape, _CAPPED_FLAGS)) + r")(=| (?=[\d.]+ or less))")


def with_flags(text: str) -> str:
    """`lora.r: must be ...` as `--r: must be ...`, and a cap's `r=2000 ... use r 1024 or less` as
    `--r 2000 ... use --r 1024 or less`."""
    text = _FIELD.sub(lambda match: FIELD_FLAGS[match.group(1)], text)
    return _CAP.sub(lambda match: f"{_CAPPED_FLAGS[match.group(1)]} ", text)
