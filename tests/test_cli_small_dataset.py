"""A dataset smaller than one optimizer step: `qlora-bot train` says so (rows, the step's size, what the
step count then means, the fix) on the terminal, in the job's events and in its log; and still trains."""

from __future__ import annotations

import json

from protocol.events import Phase
from protocol.job_spec import TrainingSpec
from tests.test_cli_train import cli, job_events
from tests.worker_helpers import write_chat_dataset
from trainer.training.small_data import smaller_than_one_step


def test_a_dataset_smaller_than_one_step_is_warned_about(tiny_model_dir, tmp_path, data_home):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=4)  # packs into one row of 128 tokens
    result = cli(
        "train",
        "--base-model",
        str(tiny_model_dir),
        "--dataset",
        str(dataset),
        "--max-steps",
        "3",
        "--max-length",
        "128",
        "--batch-size",
        "2",
        "--grad-accum",
        "4",
        home=data_home,
    )
    assert result.returncode == 0, result.stderr
    events = job_events(data_home, 1)
    [packed] = [e.message for e in events if isinstance(e, Phase) and "packed rows of up to" in e.message]
    rows = int(packed.split()[0])
    assert 0 < rows < 8
    expected = (
        f"the dataset is smaller than one optimizer step: {rows} packed rows, but a step takes "
        f"batch_size 2 x grad_accum 4 = 8; every step trains on all {rows}, so max_steps 3 means 3 passes "
        f"over the data. For steps of the size asked: lower batch_size or grad_accum (train --batch-size / "
        f"--grad-accum) so a step takes at most {rows}, or add examples, or turn packing off (--no-packing"
    )
    assert f"warning: {expected}" in result.stderr
    assert "done: 3 steps" in result.stderr  # warned, not refused: the steps asked for ran
    warnings = [e for e in events if isinstance(e, Phase) and "smaller than one optimizer step" in e.message]
    assert len(warnings) == 1 and warnings[0].name == "tokenizing"
    assert f"WARNING trainer.train: {expected}" in (data_home / "jobs" / "1" / "train.log").read_text()
    assert json.loads((data_home / "jobs" / "1" / "metrics.json").read_text())["steps"] == 3


def test_the_warning_only_when_one_step_does_not_fit():
    training = TrainingSpec(batch_size=2, grad_accum=4)
    assert smaller_than_one_step(8, training) is None and smaller_than_one_step(100, training) is None
    assert smaller_than_one_step(0, training) is None  # no rows at all is refused elsewhere
    by_epochs = smaller_than_one_step(7, training)
    assert by_epochs is not None
    assert "7 packed rows" in by_epochs and "epochs 1 means 1 optimizer step." in by_epochs
    unpacked = smaller_than_one_step(3, TrainingSpec(batch_size=4, grad_accum=1, packing=False, epochs=2.5))
    assert unpacked is not None
    assert "3 rows, but a step takes batch_size 4 x grad_accum 1 = 4" in unpacked
    assert "epochs 2.5 means 3 optimizer steps" in unpacked and "--no-packing" not in unpacked
