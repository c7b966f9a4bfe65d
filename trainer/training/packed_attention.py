"""Attention for packed rows: each document attends only to itself, at the cost of its own length.

Packing concatenates documents into one row whose positions restart at 0 per document. transformers keeps
them apart with a block-diagonal mask over the whole row, so attention costs the row's length squared, and
on the GPU its cuDNN kernel is re-planned for every new row length (measured: 3.7 ms per layer and several
ms of host time per call, a third of a 7B step; bench/RESULTS.md). Variable-length flash attention takes the
document boundaries instead: the cost is the sum of each document's length squared and there is no mask.

`use_packed_attention(model)` registers this function with transformers and makes it the model's attention.
It is exact on every device: CUDA runs PyTorch's varlen flash kernel, the CPU (and GPUs without it) runs
SDPA with the same block-diagonal causal mask built from the boundaries.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F

NAME = "qlora_bot_packed"

try:  # PyTorch >= 2.10
    from torch.nn.attention.varlen import varlen_attn as _varlen_attn
except ImportError:  # pragma: no cover - older PyTorch: the masked path below
    _varlen_attn = None


def use_packed_attention(model: Any, row_tokens: int) -> str | None:
    """Make `model` (a transformers model, or a peft model around one) attend per packed document, for
    padding-free rows of at most `row_tokens`; returns why not when the model needs more than causal
    attention (logit soft-capping, a sliding window shorter than a row), None when installed.

    Padding cannot be expressed by document bounds, so a padded batch is refused: the mask step is flash
    attention's, which passes a padding mask on and nothing else."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(base.config, "text_config", None) or base.config
    if getattr(config, "attn_logit_softcapping", None) is not None:
        return "its attention soft-caps logits"
    window = getattr(config, "sliding_window", None)
    if window is not None and getattr(config, "use_sliding_window", True) and window < row_tokens:
        return f"its sliding window ({window}) is shorter than a packed row ({row_tokens})"
    AttentionInterface.register(NAME, packed_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)
    base.config._attn_implementation = NAME
    return None


def document_bounds(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Cumulative document starts (int32, with the total at the end) and the longest document, from
    positions that restart at 0 where a document starts (every row of the batch starts one)."""
    flat = position_ids.reshape(-1)
    is_start = flat == 0
    is_start[0] = True  # a row that opens mid-document still opens a span
    starts = torch.nonzero(is_start).flatten()
    total = torch.tensor([flat.numel()], device=flat.device)
    bounds = torch.cat([starts, total]).to(torch.int32)
    return bounds, int((bounds[1:] - bounds[:-1]).max())


_last_bounds: tuple[torch.Tensor, torch.Tensor, int] | None = None


def _bounds_of(position_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """document_bounds, once per forward: every layer gets the same position_ids tensor, and each
    computation costs a device-to-host copy that stalls the queue of kernels."""
    global _last_bounds
    if _last_bounds is None or _last_bounds[0] is not position_ids:
        _last_bounds = (position_ids, *document_bounds(position_ids))
    return _last_bounds[1], _last_bounds[2]


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    position_ids: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **_: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention signature: query (batch, heads, length, dim), key/value with kv heads;
    returns (batch, length, heads, dim)."""
    if attention_mask is not None or position_ids is None:
        raise ValueError(
            "packed attention needs padding-free rows with position_ids and no attention mask (packing on)"
        )
    batch, heads, length, dim = query.shape
    bounds, longest = _bounds_of(position_ids)
    # use_packed_attention declines such models; never compute a different attention silently.
    if softcap is not None or (sliding_window is not None and longest > sliding_window):
        raise ValueError("packed attention is plain causal attention: no soft-capping, no sliding window")
    # (batch, heads, length, dim) -> (tokens, heads, dim): no document crosses a row, so rows concatenate.
    q, k, v = (t.transpose(1, 2).reshape(batch * length, t.shape[1], dim) for t in (query, key, value))
    if k.shape[1] != heads:  # grouped-query attention: share each kv head with its group of query heads
        k, v = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (k, v))
    flash_ready = q.dtype in (torch.float16, torch.bfloat16) and dropout == 0.0
    if query.is_cuda and _varlen_attn is not None and flash_ready:
        out = _varlen_attn(q, k, v, bounds, bounds, longest, longest, scale=scaling, **_CAUSAL)
    else:
        out = _masked_attention(q, k, v, bounds, scaling, dropout if module.training else 0.0)
    return out.view(batch, length, heads, dim), None


def _masked_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bounds: torch.Tensor,
    scaling: float | None,
    dropout: float,
) -> torch.Tensor:
    """The same attention through SDPA and a block-diagonal causal mask (the reference and the fallback)."""
    tokens = q.shape[0]
    index = torch.arange(tokens, device=q.device)
    document = torch.bucketize(index, bounds[1:].to(index.dtype), right=True)
    mask = (document[:, None] == document[None, :]) & (index[:, None] >= index[None, :])
    q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # (heads, tokens, dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=scaling)
    return out.transpose(0, 1)


def _causal_argument() -> dict[str, Any]:
    """Earlier releases of varlen_attn take `is_causal`; PyTorch 2.13's takes a `window_size`."""
    if _varlen_attn is None:
        return {}
    parameters = inspect.signature(_varlen_attn).parameters
    return {"is_causal": True} if "is_causal" in parameters else {"window_size": (-1, 0)}


_CAUSAL = _causal_argument()
