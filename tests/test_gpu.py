"""The CUDA path of the worker (bf16 or fp16 compute, 8-bit AdamW); skipped where there is no GPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protocol.events import Done, Progress
from protocol.launch import Launch
from tests.worker_helpers import run_worker, tiny_spec, write_chat_dataset


@pytest.mark.gpu
def test_worker_trains_on_the_gpu_with_8bit_adamw(tiny_model_dir, tmp_path):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl")
    spec = tiny_spec(tiny_model_dir, dataset, max_steps=6)
    events, code = run_worker(spec, Launch(job_dir=str(tmp_path / "job")))
    assert code == 0, events[-1]
    assert isinstance(events[-1], Done)
    progress = [event for event in events if isinstance(event, Progress)]
    assert progress[-1].gpu_mem_gib is not None and progress[-1].gpu_mem_gib > 0
    runtime = json.loads((Path(events[-1].adapter_dir) / "qlora_bot.json").read_text())["runtime"]
    assert runtime["device"].startswith("cuda:")
    assert runtime["compute_dtype"] in ("bfloat16", "float16")
    assert runtime["optimizer"] == "adamw_bnb_8bit"
