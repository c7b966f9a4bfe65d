"""Run the real training worker on the tiny model and collect its events (shared by the worker tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from protocol.events import Event, decode_event
from protocol.job_folder import JobFolder
from protocol.job_spec import DatasetSpec, JobSpec, LoraSpec, TrainingSpec
from protocol.launch import Launch

REPO_ROOT = Path(__file__).resolve().parent.parent


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def write_chat_dataset(path: Path, rows: int = 48) -> Path:
    with path.open("w") as out:
        for i in range(rows):
            messages = [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": f"The answer is {2 * i}."},
            ]
            out.write(json.dumps({"messages": messages}) + "\n")
    return path


def train_args(model: Path, dataset: Path, *, steps: int, checkpoint_steps: int, extra: tuple = ()) -> list:
    """`qlora-bot train` on the tiny model, one 64-token row per optimizer step (fast and exact)."""
    return [
        "train",
        "--base-model",
        str(model),
        "--dataset",
        str(dataset),
        "--max-steps",
        str(steps),
        "--checkpoint-steps",
        str(checkpoint_steps),
        "--max-length",
        "64",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        *extra,
    ]


def tiny_spec(model_dir: Path, dataset: Path, **training: object) -> JobSpec:
    settings = {
        "max_steps": 4,
        "learning_rate": 1e-3,
        "max_length": 128,
        "checkpoint_steps": 2,
        "batch_size": 2,
    }
    settings.update(training)
    return JobSpec(
        base_model=str(model_dir),
        dataset=DatasetSpec(source=str(dataset), kind="file"),
        lora=LoraSpec(r=8),
        training=TrainingSpec(**settings),  # type: ignore[arg-type]
    )


def worker_command(spec: JobSpec, launch: Launch, module: str = "trainer.training.worker") -> list[str]:
    """`python -m trainer.training.worker SPEC.json --job-dir ...` as the executor runs it, the spec written
    into the job folder."""
    folder = JobFolder(Path(launch.job_dir))
    folder.path.mkdir(parents=True, exist_ok=True)
    folder.spec_file.write_text(spec.to_json())
    return [sys.executable, "-m", module, str(folder.spec_file), *launch.argv()]


def run_worker(spec: JobSpec, launch: Launch, timeout: float = 240) -> tuple[list[Event], int]:
    """Run `python -m trainer.training.worker` to completion; every stdout line must be a protocol event."""
    result = subprocess.run(
        worker_command(spec, launch),
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=timeout,
    )
    events = [decode_event(line) for line in result.stdout.splitlines() if line.strip()]
    return events, result.returncode
