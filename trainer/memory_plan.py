"""Decide gradient checkpointing from the GPU's free memory and the model's shape.

Checkpointing recomputes every decoder layer in the backward pass: about a third more compute for a
fraction of the activation memory (FACTS.md: 11,750 vs ~8,000 tokens/s, 20.4 vs 7.6 GiB on a 7B model).
So it is only worth paying for when the activations of one micro-batch would not fit. The estimate is
deliberately pessimistic (it counts every tensor autograd keeps per layer, LoRA dropout copies included),
because a wrong "off" costs an out-of-memory error and a wrong "on" costs only speed.

Stdlib only: the arithmetic is tested on its own; the worker feeds it torch's memory figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 2**30
BF16 = 2
# Held back from the plan: allocator fragmentation, cuBLAS workspaces, the dequantised weight of the
# layer being computed (a 7B MLP weight is 86 MiB in bf16), and whatever other processes allocate later.
FIXED_MARGIN = 1 * GIB
RELATIVE_MARGIN = 0.10


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    kv_width: int  # key (= value) projection width: heads_kv * head_dim
    vocab: int

    @classmethod
    def of(cls, config: Any) -> ModelShape | None:
        """From a transformers config (a multimodal one's text part); None when a field is missing."""
        config = getattr(config, "text_config", None) or config
        try:
            hidden = int(config.hidden_size)
            heads = int(config.num_attention_heads)
            kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
            head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
            return cls(
                layers=int(config.num_hidden_layers),
                hidden=hidden,
                intermediate=int(config.intermediate_size),
                kv_width=kv_heads * head_dim,
                vocab=int(config.vocab_size),
            )
        except (AttributeError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class TrainingLoad:
    tokens_per_micro_batch: int
    trainable_params: int
    lora_dropout: bool  # each adapted layer then keeps a dropped copy of its input and a mask
    fused_loss: bool  # liger's fused linear + cross-entropy never holds the full logits


@dataclass(frozen=True)
class CheckpointingPlan:
    enabled: bool
    reason: str
    predicted_peak_bytes: int  # of the chosen setting, model included

    @property
    def message(self) -> str:
        state = "on" if self.enabled else "off"
        return f"gradient checkpointing {state}: {self.reason}"


def activation_bytes_per_token(shape: ModelShape, lora_dropout: bool) -> int:
    """What autograd keeps for one token through one decoder layer (Llama-style: RMSNorm, attention,
    gated MLP), in bf16: both norms' inputs and outputs, q/k/v, the attention output, gate, up and their
    product; with LoRA dropout, a dropped copy of each adapted layer's input plus its one-byte mask."""
    h, kv, inner = shape.hidden, shape.kv_width, shape.intermediate
    kept = BF16 * (6 * h + 2 * kv + 3 * inner)
    if lora_dropout:
        # q, k, v, o, gate and up read h-wide inputs, down reads the intermediate one.
        kept += (BF16 + 1) * (6 * h + inner)
    return kept


def plan_checkpointing(
    shape: ModelShape | None,
    load: TrainingLoad,
    allocated_bytes: int,
    free_bytes: int,
    limit_bytes: int | None = None,
) -> CheckpointingPlan:
    """Checkpointing off when a micro-batch's activations fit in the memory left; on otherwise.

    allocated_bytes: what this process holds now (the 4-bit model); free_bytes: the device's free memory
    now; limit_bytes: a cap on this job's total (memory_limit_gib), None for the whole free memory."""
    room = free_bytes
    if limit_bytes is not None:
        room = min(room, limit_bytes - allocated_bytes)
    if shape is None:
        return CheckpointingPlan(True, "the model's shape is unknown, so memory is saved", allocated_bytes)
    tokens = load.tokens_per_micro_batch
    per_layer = activation_bytes_per_token(shape, load.lora_dropout)
    # fp32 LoRA weights and gradients, and 8-bit AdamW's two moments.
    optimizer = load.trainable_params * (4 + 4 + 2)
    # Unfused: bf16 logits, their fp32 copy for the loss and its gradient.
    logits = 0 if load.fused_loss else tokens * shape.vocab * (BF16 + 4 + 4)
    without = optimizer + logits + tokens * shape.layers * per_layer
    # With checkpointing each layer keeps only its input, plus one layer recomputed at a time.
    with_checkpointing = optimizer + logits + tokens * (shape.layers * BF16 * shape.hidden + per_layer)
    peak_without, peak_with = allocated_bytes + without, allocated_bytes + with_checkpointing
    needed = without * (1 + RELATIVE_MARGIN) + FIXED_MARGIN
    budget = "the memory limit" if limit_bytes is not None and room < free_bytes else "free GPU memory"
    if needed <= room:
        return CheckpointingPlan(
            False,
            f"{_gib(needed)} GiB of activations and optimizer state fit in {_gib(room)} GiB of {budget}",
            peak_without,
        )
    return CheckpointingPlan(
        True,
        f"{_gib(needed)} GiB of activations would not fit in {_gib(room)} GiB of {budget}",
        peak_with,
    )


def _gib(size: float) -> str:
    return f"{size / GIB:.1f}"
