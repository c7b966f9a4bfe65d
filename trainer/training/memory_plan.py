"""Decide gradient checkpointing and the micro-step size from the GPU's free memory and the model's shape.

Checkpointing recomputes every decoder layer in the backward pass: about a third more compute for a
fraction of the activation memory (FACTS.md: 11,750 vs ~8,000 tokens/s, 20.4 vs 7.6 GiB on a 7B model).
So it is only worth paying for when the activations of one micro-batch would not fit. The estimate is
deliberately pessimistic (it counts every tensor autograd keeps per layer, LoRA dropout copies included),
because a wrong "off" costs an out-of-memory error and a wrong "on" costs only speed.

The arithmetic is stdlib only and tested on its own; `plan_for` feeds it torch's figures for a job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from protocol.job_spec import JobSpec

log = logging.getLogger(__name__)

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
    rows: int  # packed rows per micro-step, as the job asks (batch_size)
    row_tokens: int  # max_length
    accumulation: int  # micro-steps per optimizer step, as the job asks (grad_accum)
    trainable_params: int
    lora_dropout: bool  # each adapted layer then keeps a dropped copy of its input and a mask
    fused_loss: bool  # the loss never holds the full (tokens, vocab) logits


@dataclass(frozen=True)
class MemoryPlan:
    checkpointing: bool
    rows: int  # packed rows per micro-step; rows * accumulation is always the job's own product
    accumulation: int
    reason: str
    predicted_peak_bytes: int  # of the chosen setting, model included

    @property
    def message(self) -> str:
        state = "on" if self.checkpointing else "off"
        return (
            f"gradient checkpointing {state}, {self.rows} rows per micro-step x {self.accumulation} "
            f"accumulated: {self.reason}"
        )


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


def plan_memory(
    shape: ModelShape | None,
    load: TrainingLoad,
    allocated_bytes: int,
    free_bytes: int,
    limit_bytes: int | None = None,
    checkpointing: bool | None = None,
) -> MemoryPlan:
    """The fastest setting whose activations fit in the memory left.

    Speed comes first from keeping activations (checkpointing off: a third less compute), then from
    larger micro-steps: each micro-step pays a fixed cost (the 4-bit weights dequantised twice, thousands
    of kernel launches), so accumulated micro-steps are merged into one, keeping the tokens per optimizer
    step, up to MAX_MICRO_TOKENS. checkpointing: the job's choice, None to decide. allocated_bytes: what
    this process holds now (the 4-bit model); free_bytes: the device's free memory now; limit_bytes: a cap
    on this job's total (memory_limit_gib), None for the whole free memory."""
    room = free_bytes if limit_bytes is None else min(free_bytes, limit_bytes - allocated_bytes)
    budget = "the memory limit" if limit_bytes is not None and room < free_bytes else "free GPU memory"
    if shape is None:
        chosen = True if checkpointing is None else checkpointing
        reason = "the model's shape is unknown"
        return MemoryPlan(chosen, load.rows, load.accumulation, reason, allocated_bytes)
    choices = [False, True] if checkpointing is None else [checkpointing]
    for keep in choices:
        for merged in _merges(load):
            rows = load.rows * merged
            needed = _needed_bytes(shape, load, rows * load.row_tokens, keep)
            if needed * (1 + RELATIVE_MARGIN) + FIXED_MARGIN <= room:
                return MemoryPlan(
                    keep,
                    rows,
                    load.accumulation // merged,
                    f"{_gib(needed)} GiB of activations and optimizer state fit in {_gib(room)} GiB "
                    f"of {budget}",
                    allocated_bytes + int(needed),
                )
    # Nothing fits: the least memory there is, and the job finds out (an out-of-memory error with a hint).
    last = choices[-1]
    needed = _needed_bytes(shape, load, load.rows * load.row_tokens, last)
    return MemoryPlan(
        last,
        load.rows,
        load.accumulation,
        f"even so {_gib(needed)} GiB of activations may not fit in {_gib(room)} GiB of {budget}",
        allocated_bytes + int(needed),
    )


# Past this many tokens per micro-step the fixed costs are amortised (measured on an H200, bench/RESULTS.md)
# and larger steps only take memory.
MAX_MICRO_TOKENS = 8192


def _merges(load: TrainingLoad) -> list[int]:
    """How many accumulated micro-steps may become one: divisors of the accumulation, largest first, within
    MAX_MICRO_TOKENS (always 1, the job as asked)."""
    fitting = [
        k
        for k in range(load.accumulation, 0, -1)
        if load.accumulation % k == 0 and load.rows * k * load.row_tokens <= MAX_MICRO_TOKENS
    ]
    return fitting or [1]


def _needed_bytes(shape: ModelShape, load: TrainingLoad, tokens: int, checkpointing: bool) -> float:
    per_layer = activation_bytes_per_token(shape, load.lora_dropout)
    # fp32 LoRA weights and gradients, and 8-bit AdamW's two moments.
    optimizer = load.trainable_params * (4 + 4 + 2)
    # Unfused: bf16 logits, their fp32 copy for the loss and its gradient.
    logits = 0 if load.fused_loss else tokens * shape.vocab * (BF16 + 4 + 4)
    if checkpointing:
        # Each layer keeps only its input, plus one layer recomputed at a time.
        return optimizer + logits + tokens * (shape.layers * BF16 * shape.hidden + per_layer)
    return optimizer + logits + tokens * shape.layers * per_layer


def _gib(size: float) -> str:
    return f"{size / GIB:.1f}"


def plan_for(spec: JobSpec, model: Any) -> MemoryPlan:
    """Checkpointing and the micro-step size of `spec` on `model` for this GPU's free memory right now."""
    import torch

    training = spec.training
    choice = training.gradient_checkpointing
    forced = choice if isinstance(choice, bool) else None
    if not torch.cuda.is_available():
        # CPU runs are tests and tiny models: RAM is not what limits them, and no GPU memory is planned.
        reason = "as the job asks" if forced is not None else "a CPU run keeps its activations"
        return MemoryPlan(bool(forced), training.batch_size, training.grad_accum, reason, 0)
    free, _total = torch.cuda.mem_get_info()
    limit = training.memory_limit_gib
    plan = plan_memory(
        ModelShape.of(model.config),
        TrainingLoad(
            rows=training.batch_size,
            row_tokens=training.max_length,
            accumulation=training.grad_accum,
            trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
            lora_dropout=spec.lora.dropout > 0,
            # trl (>= 1.16) computes the loss through its chunked LM head, never the full logits.
            fused_loss=True,
        ),
        allocated_bytes=torch.cuda.memory_allocated(),
        free_bytes=free,
        limit_bytes=None if limit is None else int(limit * GIB),
        checkpointing=forced,
    )
    log.info("%s (predicted peak %.1f GiB)", plan.message, plan.predicted_peak_bytes / GIB)
    return plan
