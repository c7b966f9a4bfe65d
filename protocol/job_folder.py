"""A job folder's layout: written by the worker that trains in it, read by the bot that resumes, publishes
and serves from it. Every name of a file or folder in it is spelled here and nowhere else."""

from __future__ import annotations

from pathlib import Path

LOG_FILE_NAME = "train.log"  # the worker's stderr, kept by whoever spawned it
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
ADAPTER_RECORD = "qlora_bot.json"  # beside the adapter's weights: what it was trained from and how
METRICS_FILE = "metrics.json"
LOSS_HISTORY_FILE = "loss_history.json"
TRAINER_STATE = "trainer_state.json"  # a checkpoint's; written last, so its presence means complete


def newest_checkpoint(job_dir: str | Path) -> str | None:
    """The newest complete checkpoint in a job folder (trainer_state.json is written last)."""
    found = []
    for path in (Path(job_dir) / CHECKPOINTS_DIR).glob("checkpoint-*"):
        step = path.name.removeprefix("checkpoint-")
        if step.isdigit() and (path / TRAINER_STATE).is_file():
            found.append((int(step), path))
    return str(max(found)[1]) if found else None
