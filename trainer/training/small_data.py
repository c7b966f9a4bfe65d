"""A dataset smaller than one optimizer step: transformers then runs every step over the whole dataset
(one short step per epoch), so `max_steps 20` silently means 20 passes. The worker says so, with the fix.

Warned, not refused: the run is well defined and a tiny smoke-test dataset is a normal first try; but the
person must learn that steps are passes and shorter than asked. Stdlib only, checked once the rows are
packed (their count is known only then)."""

from __future__ import annotations

import math

from protocol.job_spec import TrainingSpec


def smaller_than_one_step(rows: int, training: TrainingSpec) -> str | None:
    """The warning for `rows` training rows (packed, or examples without packing); None when at least one
    full optimizer step fits."""
    per_step = training.batch_size * training.grad_accum
    if rows <= 0 or rows >= per_step:
        return None
    kind = "packed rows" if training.packing else "rows"
    if training.max_steps is not None:
        meaning = f"max_steps {training.max_steps} means {training.max_steps} passes over the data"
    else:
        steps = math.ceil(training.epochs)
        meaning = f"epochs {training.epochs:g} means {steps} optimizer step{'s' if steps != 1 else ''}"
    fixes = [
        f"lower batch_size or grad_accum (train --batch-size / --grad-accum) so a step takes at most {rows}",
        "add examples",
    ]
    if training.packing:
        fixes.append("turn packing off (--no-packing: one example per row)")
    return (
        f"warning: the dataset is smaller than one optimizer step: {rows} {kind}, but a step takes "
        f"batch_size {training.batch_size} x grad_accum {training.grad_accum} = {per_step}; every step "
        f"trains on all {rows}, so {meaning}. For steps of the size asked: {', or '.join(fixes)}"
    )
