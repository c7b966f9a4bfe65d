"""Run the real training worker on the tiny model and collect its events (shared by the worker tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from protocol.events import Event, decode_event
from protocol.job_spec import DatasetSpec, JobSpec, LoraSpec, TrainingSpec

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


def tiny_spec(model_dir: Path, dataset: Path, job_dir: Path, **training: object) -> JobSpec:
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
        output_dir=str(job_dir),
        lora=LoraSpec(r=8),
        training=TrainingSpec(**settings),  # type: ignore[arg-type]
    )


def run_worker(spec: JobSpec, timeout: float = 240) -> tuple[list[Event], int]:
    """Run `python -m trainer.training.worker` to completion; every stdout line must be a protocol event."""
    job_dir = Path(spec.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    spec_path = job_dir / "spec.json"
    spec_path.write_text(spec.to_json())
    result = subprocess.run(
        [sys.executable, "-m", "trainer.training.worker", str(spec_path)],
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=timeout,
    )
    events = [decode_event(line) for line in result.stdout.splitlines() if line.strip()]
    return events, result.returncode
