"""The memory plan: checkpointing off when activations fit, then micro-steps as large as memory allows."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

from trainer.training.memory_plan import (
    GIB,
    ModelShape,
    TrainingLoad,
    activation_bytes_per_token,
    plan_memory,
)

LLAMA_7B = ModelShape(layers=32, hidden=4096, intermediate=11008, kv_width=4096, vocab=32000)
# The default job: 2 packed rows of 2048 tokens, all-linear r=16 LoRA (40M parameters), dropout 0.05.
DEFAULT_LOAD = TrainingLoad(
    rows=2, row_tokens=2048, accumulation=4, trainable_params=40_000_000, lora_dropout=True, fused_loss=True
)
MODEL_4BIT = int(3.9 * GIB)


def test_an_h200_keeps_activations_and_merges_micro_steps():
    plan = plan_memory(LLAMA_7B, DEFAULT_LOAD, allocated_bytes=MODEL_4BIT, free_bytes=130 * GIB)
    assert not plan.checkpointing
    # Two accumulated micro-steps of 2 x 2048 become one of 4 x 2048: the same 16k tokens per step.
    assert (plan.rows, plan.accumulation) == (4, 2)
    assert plan.message.startswith("gradient checkpointing off, 4 rows per micro-step x 2 accumulated: ")
    assert "free GPU memory" in plan.message
    # Counted pessimistically: the measured peak at 4096 tokens was 28.7 GiB (bench/RESULTS.md).
    assert 50 * GIB < plan.predicted_peak_bytes < 70 * GIB


def test_an_80_gib_card_keeps_activations_at_the_jobs_micro_step():
    plan = plan_memory(LLAMA_7B, DEFAULT_LOAD, allocated_bytes=MODEL_4BIT, free_bytes=40 * GIB)
    assert (plan.checkpointing, plan.rows, plan.accumulation) == (False, 2, 4)


def test_a_16_gib_limit_turns_checkpointing_on_and_its_peak_fits():
    plan = plan_memory(
        LLAMA_7B, DEFAULT_LOAD, allocated_bytes=MODEL_4BIT, free_bytes=130 * GIB, limit_bytes=16 * GIB
    )
    assert plan.checkpointing and (plan.rows, plan.accumulation) == (4, 2)
    assert "of the memory limit" in plan.message
    assert plan.predicted_peak_bytes < 12 * GIB


def test_when_nothing_fits_the_plan_takes_the_least_memory_and_says_so():
    plan = plan_memory(LLAMA_7B, DEFAULT_LOAD, allocated_bytes=MODEL_4BIT, free_bytes=1 * GIB)
    assert (plan.checkpointing, plan.rows, plan.accumulation) == (True, 2, 4)
    assert "may not fit in 1.0 GiB of free GPU memory" in plan.message


def test_the_jobs_own_choice_is_kept():
    kept = plan_memory(LLAMA_7B, DEFAULT_LOAD, MODEL_4BIT, 130 * GIB, checkpointing=True)
    assert kept.checkpointing and (kept.rows, kept.accumulation) == (4, 2)
    forced_off = plan_memory(LLAMA_7B, DEFAULT_LOAD, MODEL_4BIT, 12 * GIB, checkpointing=False)
    assert not forced_off.checkpointing and "may not fit" in forced_off.reason


def test_micro_steps_merge_only_by_divisors_of_the_accumulation():
    odd = TrainingLoad(1, 2048, 3, 40_000_000, True, True)
    plan = plan_memory(LLAMA_7B, odd, MODEL_4BIT, 130 * GIB)
    assert (plan.rows, plan.accumulation) == (3, 1)  # 3 x 2048 <= 8192 tokens
    long_rows = TrainingLoad(1, 8192, 4, 40_000_000, True, True)
    assert plan_memory(LLAMA_7B, long_rows, MODEL_4BIT, 130 * GIB).rows == 1


def test_unfused_logits_need_more_memory():
    fused = plan_memory(LLAMA_7B, DEFAULT_LOAD, MODEL_4BIT, 130 * GIB)
    unfused_load = dataclasses.replace(DEFAULT_LOAD, fused_loss=False)
    unfused = plan_memory(LLAMA_7B, unfused_load, MODEL_4BIT, 130 * GIB)
    assert (fused.rows, unfused.rows) == (4, 4)
    # bf16 logits, their fp32 copy and its gradient: 8192 x 32000 x 10 bytes.
    assert unfused.predicted_peak_bytes - fused.predicted_peak_bytes == 8192 * 32000 * 10


def test_lora_dropout_copies_count():
    without = activation_bytes_per_token(LLAMA_7B, lora_dropout=False)
    with_dropout = activation_bytes_per_token(LLAMA_7B, lora_dropout=True)
    assert without == 2 * (6 * 4096 + 2 * 4096 + 3 * 11008)
    assert with_dropout - without == 3 * (6 * 4096 + 11008)


def test_an_unknown_shape_saves_memory():
    plan = plan_memory(None, DEFAULT_LOAD, allocated_bytes=MODEL_4BIT, free_bytes=130 * GIB)
    assert plan.checkpointing and (plan.rows, plan.accumulation) == (2, 4)
    assert "unknown" in plan.reason


def test_shape_from_transformers_configs():
    llama = SimpleNamespace(
        hidden_size=4096,
        num_attention_heads=32,
        num_hidden_layers=32,
        intermediate_size=11008,
        vocab_size=32000,
    )
    assert ModelShape.of(llama) == LLAMA_7B
    grouped = SimpleNamespace(
        hidden_size=4096,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        num_hidden_layers=32,
        intermediate_size=14336,
        vocab_size=128256,
    )
    assert ModelShape.of(grouped).kv_width == 1024
    assert ModelShape.of(SimpleNamespace(text_config=llama)) == LLAMA_7B
    assert ModelShape.of(SimpleNamespace(hidden_size=64)) is None
