"""`train --output DIR`: an empty or new folder is used; an earlier job's folder, any folder with files,
or a file is refused before anything is queued, and the earlier adapter is left byte for byte."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.cli.output_folder import output_problems
from tests.test_cli_train import cli
from tests.worker_helpers import write_chat_dataset


def train_into(output: Path, dataset: Path, model: Path, home: Path):
    return cli(
        "train",
        "--base-model",
        str(model),
        "--dataset",
        str(dataset),
        "--max-steps",
        "1",
        "--max-length",
        "128",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--output",
        str(output),
        home=home,
    )


def adapter_bytes(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted((folder / "adapter").iterdir()) if path.is_file()}


def test_an_earlier_jobs_folder_is_refused_and_its_adapter_kept(tiny_model_dir, tmp_path, data_home):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=8)
    output = tmp_path / "run"
    output.mkdir()  # an existing empty folder is a fine --output
    first = train_into(output, dataset, tiny_model_dir, data_home)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == f"adapter: {output / 'adapter'}"
    before = adapter_bytes(output)
    assert "adapter_model.safetensors" in before and "qlora_bot.json" in before

    again = train_into(output, dataset, tiny_model_dir, data_home)
    assert again.returncode == 2
    assert "Traceback" not in again.stderr
    assert f"error: --output: {output} already holds a job (adapter/, checkpoints/, train.log" in again.stderr
    assert "choose a new --output or remove it" in again.stderr
    assert "job 2" not in again.stderr  # refused before anything was queued
    assert adapter_bytes(output) == before
    listing = cli("jobs", home=data_home)
    assert [line.split()[0] for line in listing.stdout.splitlines()[1:] if line.strip()] == ["1"]


@pytest.mark.parametrize("what", ["a file in it", "a file"])
def test_a_folder_with_other_files_or_a_file_is_refused(tmp_path, data_home, what):
    output = tmp_path / "notes"
    if what == "a file":
        output.write_text("mine")
    else:
        output.mkdir()
        (output / "notes.txt").write_text("mine")
    result = cli(
        "train", "--base-model", "m", "--dataset", "d.jsonl", "--output", str(output), home=data_home
    )
    assert result.returncode == 2
    expected = (
        "is a file, not a folder" if what == "a file" else "is not empty; a job needs a folder of its own"
    )
    assert f"error: --output: {output} {expected} (choose a new --output or remove it)" in result.stderr
    assert not (data_home / "jobs").exists()
    assert (output.read_text() if what == "a file" else (output / "notes.txt").read_text()) == "mine"


def test_a_new_or_empty_folder_is_free(tmp_path):
    assert output_problems(tmp_path / "new") == []
    assert output_problems(tmp_path) == []
    (tmp_path / "train.log").write_text("")
    assert output_problems(tmp_path) == [
        f"--output: {tmp_path} already holds a job (train.log): choose a new --output or remove it"
    ]
