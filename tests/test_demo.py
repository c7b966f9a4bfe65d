"""`qlora-bot demo` as a new user runs it: a tiny model built here, trained on the CPU, an adapter to ask."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from protocol.job_folder import read_metrics, read_record
from tests.worker_helpers import worker_env


def demo(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {**worker_env(), "QLORA_BOT_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", "demo", *args], capture_output=True, text=True, env=env, timeout=280
    )


def test_demo_builds_a_model_trains_it_and_says_how_to_ask(tmp_path):
    home = tmp_path / "home"
    result = demo("--max-steps", "2", home=home)
    assert result.returncode == 0, result.stderr
    folder = home / "demo"  # by default under the data directory

    # The model is built here as safetensors, with its own tokenizer and chat template: nothing downloaded.
    model = folder / "model"
    assert (model / "model.safetensors").is_file() and not list(model.glob("*.bin"))
    saved = [model / "chat_template.jinja", model / "tokenizer_config.json"]
    assert any("<|im_start|>" in path.read_text() for path in saved if path.is_file())
    rows = [json.loads(line) for line in (folder / "chats.jsonl").read_text().splitlines()]
    assert len(rows) >= 24 and all(row["messages"][-1]["role"] == "assistant" for row in rows)

    # The fine-tune ran as a job of its own and left an adapter with its record.
    adapter = folder / "job-1" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    record = read_record(adapter)
    assert record is not None and record.spec.base_model == str(model)
    assert record.data_format == "messages" and record.spec.training.max_steps == 2
    assert read_metrics(folder / "job-1").steps == 2
    assert "done: 2 steps" in result.stderr

    # What to type next, pointing at that adapter.
    assert f"adapter: {adapter}" in result.stdout
    assert f'qlora-bot ask --adapter {adapter} --compare "What is the capital of France?"' in result.stdout


def test_a_second_demo_is_a_new_job_on_the_same_model(tmp_path):
    home = tmp_path / "home"
    folder = tmp_path / "mine"
    first = demo("--dir", str(folder), "--max-steps", "1", home=home)
    assert first.returncode == 0, first.stderr
    weights = (folder / "model" / "model.safetensors").read_bytes()
    second = demo("--dir", str(folder), "--max-steps", "1", home=home)
    assert second.returncode == 0, second.stderr
    # Seeded: the rebuilt model is the same one, so the first job's adapter still fits it.
    assert (folder / "model" / "model.safetensors").read_bytes() == weights
    assert (folder / "job-1" / "adapter").is_dir() and (folder / "job-2" / "adapter").is_dir()
    assert not (home / "demo").exists()  # --dir puts everything there
