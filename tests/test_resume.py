"""`qlora-bot train --resume CHECKPOINT` with the real trainer on the tiny model: a resume continues where
the checkpoint stopped (step, optimizer, schedule, RNG, loss curve, token count), as a new job in a folder
of its own, and a checkpoint that cannot be continued is refused before anything is queued."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from protocol.events import Progress, Started
from tests.test_cli_train import cli, job_events
from tests.worker_helpers import train_args, write_chat_dataset

STEPS = 6


def resume_args(model: Path, dataset: Path) -> list[str]:
    # Dropout on (the default): a resume that lost the RNG state would draw other masks, other losses.
    return train_args(model, dataset, steps=STEPS, checkpoint_steps=3, extra=("--lr", "1e-3", "--r", "4"))


def adapter_folder(result) -> Path:
    assert result.returncode == 0, result.stderr
    return Path(result.stdout.strip().splitlines()[-1].removeprefix("adapter: "))


def history(job_dir: Path) -> list[dict]:
    return json.loads((job_dir / "loss_history.json").read_text())["train"]


def digest(folder: Path) -> str:
    hashed = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            hashed.update(path.name.encode() + path.read_bytes())
    return hashed.hexdigest()


@pytest.fixture(scope="module")
def first_run(tiny_model_dir, tmp_path_factory):
    """One uninterrupted job of STEPS steps, checkpointed at steps 3 and 6."""
    root = tmp_path_factory.mktemp("resume")
    home = root / "home"
    dataset = write_chat_dataset(root / "chat.jsonl", rows=32)
    args = resume_args(tiny_model_dir, dataset)
    job_dir = adapter_folder(cli(*args, home=home)).parent
    return home, args, job_dir


def test_a_resume_continues_at_the_saved_step_in_a_new_job_folder(first_run):
    home, args, job_dir = first_run
    before = digest(job_dir)
    checkpoint = job_dir / "checkpoints" / "checkpoint-3"
    result = cli(*args, "--resume", str(checkpoint), home=home)
    resumed_dir = adapter_folder(result).parent

    # A new job, its own folder; the job whose checkpoint it continues is only read.
    assert resumed_dir != job_dir and resumed_dir.parent == job_dir.parent
    assert f"continues from {checkpoint}" in result.stderr
    assert digest(job_dir) == before

    events = job_events(home, int(resumed_dir.name))
    started = next(event for event in events if isinstance(event, Started))
    assert started.attempt_resumes_from == str(checkpoint)
    steps = [event.step for event in events if isinstance(event, Progress)]
    assert steps[0] == 4 and steps[-1] == STEPS

    # Same optimizer, schedule, RNG and data order: the resumed steps are the uninterrupted run's.
    uninterrupted, resumed = history(job_dir), history(resumed_dir)
    assert [point["step"] for point in resumed] == list(range(1, STEPS + 1))
    for one, other in zip(uninterrupted, resumed, strict=True):
        assert other["loss"] == pytest.approx(one["loss"], abs=1e-5), (one, other)
        assert other["lr"] == pytest.approx(one["lr"], rel=1e-6)
    first_metrics = json.loads((job_dir / "metrics.json").read_text())
    metrics = json.loads((resumed_dir / "metrics.json").read_text())
    assert metrics["tokens"] == first_metrics["tokens"]  # the checkpoint's count, not a recount
    assert metrics["train_loss"] == pytest.approx(first_metrics["train_loss"], abs=1e-5)


def test_a_resume_from_the_last_checkpoint_trains_no_step_more(first_run):
    home, args, job_dir = first_run
    result = cli(*args, "--resume", str(job_dir / "checkpoints" / f"checkpoint-{STEPS}"), home=home)
    resumed_dir = adapter_folder(result).parent
    metrics = json.loads((resumed_dir / "metrics.json").read_text())
    assert metrics["steps"] == STEPS
    events = job_events(home, int(resumed_dir.name))
    # Not one step trained: the only progress is the final state (a fresh start would report step 1,
    # transformers' own resume step STEPS + 1).
    assert [event.step for event in events if isinstance(event, Progress)] == [STEPS]
    assert (resumed_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert [point["step"] for point in history(resumed_dir)] == list(range(1, STEPS + 1))


def test_a_checkpoint_of_another_lora_shape_is_refused_before_queueing(first_run):
    home, args, job_dir = first_run
    other_rank = [*args[: args.index("--r")], "--r", "8"]
    result = cli(*other_rank, "--resume", str(job_dir / "checkpoints" / "checkpoint-3"), home=home)
    assert result.returncode == 2
    assert "--r: the checkpoint has rank 4, the job asks for 8" in result.stderr
    assert "job " not in result.stderr.split("error:")[0]  # refused before a job was queued
