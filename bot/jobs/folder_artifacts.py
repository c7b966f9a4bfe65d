"""What the bot adds to a job folder when its job succeeds: the loss chart (loss.png, from the worker's loss
history) and the adapter's model card (adapter/README.md, ours in place of peft's and trl's templates).

The bot writes them, not the worker: the chart and the card are drawn in one place each (bot/loss_chart.py,
bot/hub/model_card.py) for Discord and terminal jobs alike, and only once the worker has made its last save,
so no library rewrites the card afterwards. The published card is the same one plus the repo it lives in.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bot.hub.model_card import card_facts, render_card
from bot.loss_chart import history_points, loss_chart_png
from protocol.job_folder import MODEL_CARD, JobFolder, read_loss_history, read_record
from protocol.job_spec import JobSpec

log = logging.getLogger(__name__)


async def write_folder_artifacts(
    job_id: int, job_dir: Path, adapter_dir: Path, name: str, spec: JobSpec, metrics: Mapping[str, Any]
) -> None:
    """Draw loss.png and write the card, off the event loop (matplotlib takes a while). A failure is logged,
    never raised: the adapter is trained and saved, and the job succeeds without these two files."""
    try:
        await asyncio.to_thread(write_artifacts, job_dir, adapter_dir, name, spec, metrics)
    except Exception:
        log.exception("job %s: the loss chart or the model card could not be written", job_id)


def write_artifacts(
    job_dir: Path, adapter_dir: Path, name: str, spec: JobSpec | None, metrics: Mapping[str, Any]
) -> None:
    folder = JobFolder(job_dir)
    train, evals = history_points(read_loss_history(job_dir))
    png = loss_chart_png(train, evals, f"{name} · loss")
    chart = None
    if png is not None:
        _replace(folder.loss_chart, png)
        # The card links the chart by its place relative to the card (adapter/../loss.png).
        chart = Path(os.path.relpath(folder.loss_chart, adapter_dir)).as_posix()
    facts = card_facts(adapter_dir, name, read_record(adapter_dir), spec, metrics)
    card = render_card(dataclasses.replace(facts, chart_file=chart))
    _replace(adapter_dir / MODEL_CARD, card.encode())


def _replace(path: Path, data: bytes) -> None:
    """Written beside and renamed over: a reader never sees half a file (a crash mid-write leaves the old)."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_bytes(data)
    partial.replace(path)
