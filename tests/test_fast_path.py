"""The fast training path learns what the plain path learns: same data, same seed, the same loss curve.

On the CPU the fast path differs from the plain one by what its memory plan chooses (no gradient
checkpointing, merged micro-steps); on a GPU also by liger's fused kernels and flash attention per packed
document (tests/test_packing.py compares that attention exactly). They change speed and memory only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from protocol.events import Done, Phase
from protocol.launch import Launch
from tests.worker_helpers import run_worker, tiny_spec, write_chat_dataset


def _train(
    model_dir: Path, dataset: Path, job: Path, cache: Path | None = None, **training: object
) -> tuple[list[float], dict, list]:
    spec = tiny_spec(model_dir, dataset, max_steps=6, **training)
    events, code = run_worker(spec, Launch(job_dir=str(job), cache_dir=str(cache) if cache else None))
    assert code == 0, events[-1]
    assert isinstance(events[-1], Done)
    history = json.loads((job / "loss_history.json").read_text())["train"]
    runtime = json.loads((Path(events[-1].adapter_dir) / "qlora_bot.json").read_text())["runtime"]
    return [point["loss"] for point in history], runtime, events


def _messages(events: list) -> list[str]:
    return [event.message for event in events if isinstance(event, Phase) and event.message]


@pytest.mark.skipif(torch.cuda.is_available(), reason="float32 CPU equality; the GPU test below is bf16")
def test_the_fast_path_learns_what_the_plain_path_learns(tiny_model_dir, tmp_path):
    """Plain: checkpointing, 2 rows x 4 accumulated. Fast: activations kept and the four micro-steps
    merged into one of 8 rows, as the memory plan does on a large GPU; the tokens come from the cache."""
    dataset = write_chat_dataset(tmp_path / "chat.jsonl")
    cache = tmp_path / "cache"
    plain, plain_runtime, first_events = _train(
        tiny_model_dir, dataset, tmp_path / "plain", cache, gradient_checkpointing=True
    )
    fast, fast_runtime, events = _train(
        tiny_model_dir, dataset, tmp_path / "fast", cache, batch_size=8, grad_accum=1
    )
    assert (plain_runtime["gradient_checkpointing"], fast_runtime["gradient_checkpointing"]) == (True, False)
    assert fast_runtime["fused_kernels"] is False  # no liger on the CPU
    assert fast_runtime["micro_step"] == "8 rows x 1 accumulated"
    assert (
        "gradient checkpointing off, 8 rows per micro-step x 1 accumulated: a CPU run keeps its activations"
        in _messages(events)
    )
    # The second job reuses the first one's tokens (trainer/data/tokenization_cache.py).
    assert not any("reused" in message for message in _messages(first_events))
    assert any("tokenized before, reused" in message for message in _messages(events))
    assert len(plain) == len(fast) == 6
    assert plain[0] != plain[-1]  # it learned something, so equal curves are not two flat lines
    assert fast == pytest.approx(plain, rel=1e-4)


@pytest.mark.gpu
def test_fused_kernels_keep_the_loss_curve(tiny_model_dir, tmp_path):
    from trainer.training.sft import fused_kernels_available

    if not fused_kernels_available():
        pytest.skip("liger-kernel is not installed")
    dataset = write_chat_dataset(tmp_path / "chat.jsonl")
    plain, plain_runtime, _ = _train(
        tiny_model_dir, dataset, tmp_path / "plain", fused_kernels=False, gradient_checkpointing=True
    )
    fast, fast_runtime, _ = _train(tiny_model_dir, dataset, tmp_path / "fast")
    assert plain_runtime["fused_kernels"] is False and fast_runtime["fused_kernels"] is True
    assert fast_runtime["gradient_checkpointing"] is False  # a tiny model fits any GPU
    # bf16 compute: fused and unfused kernels round differently, so the curves agree to about 1%.
    assert fast == pytest.approx(plain, rel=2e-2)
    assert plain[0] != plain[-1]
