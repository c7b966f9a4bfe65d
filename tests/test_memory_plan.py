"""The checkpointing decision: off when a micro-batch's activations fit, on when they do not."""

from __future__ import annotations

from types import SimpleNamespace

from trainer.memory_plan import (
    GIB,
    ModelShape,
    TrainingLoad,
    activation_bytes_per_token,
    plan_checkpointing,
)

LLAMA_7B = ModelShape(layers=32, hidden=4096, intermediate=11008, kv_width=4096, vocab=32000)
# The default job: 2 packed rows of 2048 tokens, all-linear r=16 LoRA (40M parameters), dropout 0.05.
DEFAULT_LOAD = TrainingLoad(
    tokens_per_micro_batch=4096, trainable_params=40_000_000, lora_dropout=True, fused_loss=True
)
MODEL_4BIT = int(3.9 * GIB)


def test_an_h200_trains_a_7b_without_checkpointing():
    plan = plan_checkpointing(LLAMA_7B, DEFAULT_LOAD, allocated_bytes=MODEL_4BIT, free_bytes=130 * GIB)
    assert not plan.enabled
    assert plan.message.startswith("gradient checkpointing off: ")
    assert "free GPU memory" in plan.message
    # Counted pessimistically: more than the 20.4 GiB measured with liger and no LoRA dropout (FACTS.md).
    assert 20 * GIB < plan.predicted_peak_bytes < 40 * GIB


def test_a_16_gib_limit_turns_checkpointing_on_and_its_peak_fits():
    plan = plan_checkpointing(
        LLAMA_7B, DEFAULT_LOAD, allocated_bytes=MODEL_4BIT, free_bytes=130 * GIB, limit_bytes=16 * GIB
    )
    assert plan.enabled
    assert "the memory limit" in plan.message
    assert plan.predicted_peak_bytes < 16 * GIB


def test_a_busy_gpu_turns_checkpointing_on():
    plan = plan_checkpointing(LLAMA_7B, DEFAULT_LOAD, allocated_bytes=MODEL_4BIT, free_bytes=12 * GIB)
    assert plan.enabled
    assert "would not fit in 12.0 GiB of free GPU memory" in plan.message


def test_unfused_logits_and_longer_rows_need_more_memory():
    fused = plan_checkpointing(LLAMA_7B, DEFAULT_LOAD, MODEL_4BIT, 130 * GIB)
    unfused = plan_checkpointing(
        LLAMA_7B, TrainingLoad(4096, 40_000_000, True, fused_loss=False), MODEL_4BIT, 130 * GIB
    )
    # bf16 logits, their fp32 copy and its gradient: 4096 x 32000 x 10 bytes.
    assert unfused.predicted_peak_bytes - fused.predicted_peak_bytes == 4096 * 32000 * 10
    longer = plan_checkpointing(LLAMA_7B, TrainingLoad(16384, 40_000_000, True, True), MODEL_4BIT, 40 * GIB)
    assert longer.enabled


def test_lora_dropout_copies_count():
    without = activation_bytes_per_token(LLAMA_7B, lora_dropout=False)
    with_dropout = activation_bytes_per_token(LLAMA_7B, lora_dropout=True)
    assert without == 2 * (6 * 4096 + 2 * 4096 + 3 * 11008)
    assert with_dropout - without == 3 * (6 * 4096 + 11008)


def test_an_unknown_shape_saves_memory():
    plan = plan_checkpointing(None, DEFAULT_LOAD, allocated_bytes=MODEL_4BIT, free_bytes=130 * GIB)
    assert plan.enabled
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
