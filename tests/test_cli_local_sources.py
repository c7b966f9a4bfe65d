"""The terminal's user may name local paths (Discord may not): `qlora-bot train` with a relative file, a
relative folder shaped like a Hub id and a relative base model folder, while the worker runs in its job
folder; the spec records where the data may come from."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from bot.cli.main import build_parser
from bot.cli.train import build_spec
from bot.config import Config
from tests.worker_helpers import worker_env, write_chat_dataset


def test_train_reads_relative_local_files_and_folders(tiny_model_dir, tmp_path, data_home):
    here = tmp_path / "here"
    (here / "someorg" / "notes").mkdir(parents=True)
    write_chat_dataset(here / "someorg" / "notes" / "train.jsonl", rows=8)
    shutil.copytree(tiny_model_dir, here / "tiny")
    env = {**worker_env(), "QLORA_BOT_HOME": str(data_home)}
    flags = ["--max-steps", "1", "--max-length", "128", "--r", "4", "--batch-size", "1", "--grad-accum", "1"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bot.cli",
            "train",
            "--base-model",
            "tiny",
            "--dataset",
            "someorg/notes",
            *flags,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=here,  # the names are relative to where the person is, not to the worker's job folder
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    spec = json.loads((data_home / "jobs" / "1" / "spec.json").read_text())
    assert spec["dataset"]["kind"] == "file" and spec["dataset"]["source"] == str(here / "someorg" / "notes")
    assert spec["base_model"] == str(here / "tiny")
    assert "dataset folder notes" in result.stderr  # read as the local folder it is, not from the Hub


def test_the_cli_says_what_kind_of_source_it_was_given(tmp_path, monkeypatch):
    (tmp_path / "chat.jsonl").write_text('{"text": "a"}\n')
    monkeypatch.chdir(tmp_path)
    parser = build_parser()
    kinds = {}
    for text in (
        "chat.jsonl",
        "missing.jsonl",
        "./gone",
        "mlabonne/guanaco-llama2-1k",
        "https://x.org/d.csv",
    ):
        args = parser.parse_args(["train", "--dataset", text])
        dataset = build_spec(args, Config()).dataset
        kinds[text] = (dataset.kind, dataset.source)
    assert kinds == {
        "chat.jsonl": ("file", str(tmp_path / "chat.jsonl")),
        "missing.jsonl": ("file", str(tmp_path / "missing.jsonl")),  # the worker says it is not there
        "./gone": ("file", str(tmp_path / "gone")),
        "mlabonne/guanaco-llama2-1k": ("hub", "mlabonne/guanaco-llama2-1k"),
        "https://x.org/d.csv": ("url", "https://x.org/d.csv"),
    }
