"""The fast training path learns what the plain path learns: same data, same seed, the same loss curve.

On the CPU the fast path differs from the plain one by its memory plan (no gradient checkpointing); on a
GPU also by liger's fused kernels. Both must only change speed and memory, never the losses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.worker_helpers import run_worker, tiny_spec, write_chat_dataset
from trainer.protocol import Done, Phase


def _train(
    model_dir: Path, dataset: Path, job: Path, cache: Path | None = None, **training: object
) -> tuple[list[float], dict, list]:
    spec = tiny_spec(model_dir, dataset, job, max_steps=6, **training)
    events, code = run_worker(spec.replace(cache_dir=str(cache) if cache else None))
    assert code == 0, events[-1]
    assert isinstance(events[-1], Done)
    history = json.loads((job / "loss_history.json").read_text())["train"]
    runtime = json.loads((Path(events[-1].adapter_dir) / "qlora_bot.json").read_text())["runtime"]
    return [point["loss"] for point in history], runtime, events


def _messages(events: list) -> list[str]:
    return [event.message for event in events if isinstance(event, Phase) and event.message]


@pytest.mark.skipif(torch.cuda.is_available(), reason="float32 CPU equality; the GPU test below is bf16")
def test_without_checkpointing_the_loss_curve_is_the_plain_paths(tiny_model_dir, tmp_path):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl")
    cache = tmp_path / "cache"
    plain, plain_runtime, first_events = _train(
        tiny_model_dir, dataset, tmp_path / "plain", cache, gradient_checkpointing=True
    )
    fast, fast_runtime, events = _train(tiny_model_dir, dataset, tmp_path / "fast", cache)  # "auto": off
    # The second job reuses the first one's tokens (trainer/tokenization_cache.py) and learns the same.
    assert not any("reused" in message for message in _messages(first_events))
    assert any("tokenized before, reused" in message for message in _messages(events))
    assert plain_runtime["gradient_checkpointing"] is True
    assert fast_runtime["gradient_checkpointing"] is False
    assert fast_runtime["fused_kernels"] is False  # no liger on the CPU
    messages = _messages(events)
    assert (
        "gradient checkpointing off, 2 rows per micro-step x 4 accumulated: a CPU run keeps its activations"
        in messages
    )
    assert len(plain) == len(fast) == 6
    assert plain[0] != plain[-1]  # it learned something, so equal curves are not two flat lines
    assert fast == pytest.approx(plain, rel=1e-4)


@pytest.mark.gpu
def test_fused_kernels_keep_the_loss_curve(tiny_model_dir, tmp_path):
    from trainer.sft import fused_kernels_available

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


@pytest.mark.skipif(torch.cuda.is_available(), reason="float32 CPU equality")
def test_merged_micro_steps_learn_what_accumulated_ones_learn(tiny_model_dir, tmp_path):
    """What the memory plan does on a large GPU: 2 rows x 2 accumulated become 4 rows x 1, same step."""
    dataset = write_chat_dataset(tmp_path / "chat.jsonl")
    accumulated, _, _ = _train(tiny_model_dir, dataset, tmp_path / "accumulated", batch_size=2, grad_accum=2)
    merged, _, _ = _train(tiny_model_dir, dataset, tmp_path / "merged", batch_size=4, grad_accum=1)
    assert accumulated[0] != accumulated[-1]
    assert merged == pytest.approx(accumulated, rel=1e-4)
