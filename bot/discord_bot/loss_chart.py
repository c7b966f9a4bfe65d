"""The loss-curve PNG attached to a job's completion message (matplotlib, no display needed)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # headless: the bot runs on servers without a display
from matplotlib import pyplot as plt


def loss_chart_png(
    train: Sequence[tuple[int, float]], evals: Sequence[tuple[int, float]], title: str
) -> bytes | None:
    """A PNG of train (and eval) loss by step; None when there is no point to draw."""
    if not train and not evals:
        return None
    figure, axes = plt.subplots(figsize=(6.4, 3.6), dpi=100)
    try:
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
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png")
        return buffer.getvalue()
    finally:
        plt.close(figure)
