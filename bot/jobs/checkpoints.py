"""What the bot may know about a checkpoint folder before a job resumes from it: that it is one, its
step, which job folder it belongs to, and whether the job's LoRA settings can load it.

A resume is always a new job in a folder of its own: the checkpoint (with the folder of the job that
wrote it) is only read, so resuming never overwrites another job's adapter or checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from protocol.job_folder import (
    ADAPTER_CONFIG,
    CHECKPOINTS_DIR,
    TRAINER_STATE,
    library_json,
    newest_checkpoint,
)
from protocol.job_spec import JobSpec
from storage.models import Job


def is_checkpoint(path: str | Path) -> bool:
    return (Path(path) / TRAINER_STATE).is_file()


def checkpoint_step(path: str | Path) -> int | None:
    """The optimizer step the checkpoint was saved at."""
    step = library_json(Path(path) / TRAINER_STATE).get("global_step")
    return step if isinstance(step, int) else None


def job_folder_of(path: str | Path) -> Path | None:
    """JOB for JOB/checkpoints/checkpoint-N (the layout the worker writes), else None."""
    checkpoint = Path(path).resolve()
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS_DIR else None


def checkpoint_to_resume(job: Job) -> str | None:
    """Where a new job would continue a cancelled or failed one: its newest whole checkpoint."""
    if job.state not in ("cancelled", "failed"):
        return None
    found = newest_checkpoint(job.folder) or job.checkpoint_path
    return found if found is not None and is_checkpoint(found) else None


def resume_problems(spec: JobSpec) -> list[str]:
    """Why `spec` cannot continue from spec.resume_from, as "dotted.key: what is wrong"; empty if it can.

    The LoRA shape and the base model must be the checkpoint's, or loading its weights and optimizer
    state fails deep inside the worker (or, worse, trains another model's adapter)."""
    if not spec.resume_from:
        return []
    checkpoint = Path(spec.resume_from)
    # Named by its last parts: these messages may reach Discord, which never sees the bot's paths.
    shown = "/".join(checkpoint.parts[-3:])
    if not is_checkpoint(checkpoint):
        return [f"resume_from: {shown} is not a checkpoint folder (no {TRAINER_STATE})"]
    saved = library_json(checkpoint / ADAPTER_CONFIG)
    if not saved:
        return [f"resume_from: {shown} has no readable {ADAPTER_CONFIG}, so it is not a LoRA checkpoint"]
    problems = []
    base = saved.get("base_model_name_or_path")
    if isinstance(base, str) and not _same_model(base, spec.base_model):
        problems.append(f"base_model: the checkpoint was trained on {base}, not {spec.base_model}")
    if saved.get("r") is not None and saved["r"] != spec.lora.r:
        problems.append(f"lora.r: the checkpoint has rank {saved['r']}, the job asks for {spec.lora.r}")
    alpha = saved.get("lora_alpha")
    if alpha is not None and alpha != spec.lora.resolved_alpha:
        problems.append(
            f"lora.alpha: the checkpoint has alpha {alpha}, the job asks for {spec.lora.resolved_alpha}"
        )
    return problems


def _same_model(saved: str, asked: str) -> bool:
    if saved == asked:
        return True
    saved_path, asked_path = Path(saved).expanduser(), Path(asked).expanduser()
    return saved_path.exists() and asked_path.exists() and saved_path.resolve() == asked_path.resolve()
