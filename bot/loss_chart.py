"""The loss-curve PNG of a job: loss.png in its folder, attached to its completion message and published with
its model card (matplotlib, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from typing import Any

from protocol.events import Eval, Event, Progress
from protocol.job_folder import LossHistory

Points = list[tuple[int, float]]


def loss_points(events: Iterable[Event]) -> tuple[Points, Points]:
    """(train, eval) loss by step from a job's stored events; a re-run step keeps its newest loss."""
    train: dict[int, float] = {}
    evals: Points = []
    for event in events:
        if isinstance(event, Progress) and event.loss is not None:
            train[event.step] = event.loss
        elif isinstance(event, Eval):
            evals.append((event.step, event.eval_loss))
    return sorted(train.items()), evals


def history_points(history: LossHistory | None) -> tuple[Points, Points]:
    """(train, eval) loss by step from a job folder's loss history (the worker's loss_history.json)."""
    if history is None:
        return [], []
    train = [(point.step, point.loss) for point in history.train if point.loss is not None]
    return train, [(point.step, point.eval_loss) for point in history.eval]


def loss_chart_png(
    train: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]], title: str
) -> bytes | None:
    """A PNG of train (and eval) loss by step; None when there is no point to draw."""
    figure = loss_figure(train, evals, title)
    if figure is None:
        return None
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def loss_figure(train: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]], title: str) -> Any:
    """The chart as a matplotlib Figure: a train curve, and an eval curve when there are eval losses."""
    if not train and not evals:
        return None
    # A bare Figure, not pyplot: no global figure registry and no GUI backend, so charts can be drawn
    # on the event loop and in a publish thread at the same time. Imported here: only charts need it.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 3.6), dpi=100)
    axes = figure.subplots()
    if train:
        steps, losses = zip(*train, strict=True)
        axes.plot(steps, losses, label="train loss", color="#5865F2", linewidth=1.5)
    if evals:
        steps, losses = zip(*evals, strict=True)
        axes.plot(steps, losses, "o-", label="eval loss", color="#ED4245", linewidth=1.5)
    axes.set_xlabel("step")
    axes.set_ylabel("loss")
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    return figure
