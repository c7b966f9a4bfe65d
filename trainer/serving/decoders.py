"""Step a batch of rows through a model one token at a time: prefill the prompts, then decode.

Two decoders with one interface. `StaticDecoder` (static_decoder.py) runs Llama-family models with a
static KV cache and, on a GPU, replays each decode step as a CUDA graph. `HfDecoder` (here) runs any
causal LM through its own forward and a dynamic cache: slower, but it only needs what transformers
offers. Both route each row to its adapter slot through the LoRA bank (lora.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, Protocol

import torch
from transformers import DynamicCache

from trainer.serving.lora import LoraRouting


class Session(Protocol):
    """One batch being decoded. `logits` are the rows' next-token scores (rows, vocab), float32."""

    logits: torch.Tensor

    def step(self, tokens: torch.Tensor, active: Sequence[bool]) -> torch.Tensor:
        """Feed each row its chosen token ((rows,) int64 on the model's device); the next logits. Rows not
        `active` stay where they are (finished, or at their last token): their tokens are ignored. Ideally
        returns without waiting for the GPU: run_rows queues a step before reading the previous tokens."""
        ...


class Decoder(Protocol):
    def start(self, prompts: Sequence[Sequence[int]], slots: Sequence[int | None], length: int) -> Session:
        """Prefill `prompts` (one row each, adapter slot or None for the base model); rows will hold at most
        `length` tokens, prompt included."""
        ...


class HfDecoder:
    """Any causal LM, through its own forward with a dynamic cache and left padding."""

    def __init__(self, model: Any, routing: LoraRouting) -> None:
        self.model = model
        self.routing = routing
        parameters = inspect.signature(model.forward).parameters
        # transformers 5.24 renamed past_key_values to cache (the old name warns until 5.40).
        self.cache_argument = "cache" if "cache" in parameters else "past_key_values"
        self.keeps_last_logits = "logits_to_keep" in parameters

    def start(self, prompts: Sequence[Sequence[int]], slots: Sequence[int | None], length: int) -> Session:
        return _HfSession(self, prompts, slots)


class _HfSession:
    def __init__(
        self, decoder: HfDecoder, prompts: Sequence[Sequence[int]], slots: Sequence[int | None]
    ) -> None:
        self.decoder = decoder
        device = next(decoder.model.parameters()).device
        self.slots, self.device = list(slots), device
        width = max(len(ids) for ids in prompts)
        # Left padding puts every row's next token at the end; the mask hides the padding, the positions
        # restart at each row's first real token so a padded row computes what it would alone.
        ids = torch.tensor([[0] * (width - len(p)) + list(p) for p in prompts], device=device)
        self.mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        self.positions = (self.mask.cumsum(-1) - 1).clamp(min=0)
        self.cache = DynamicCache()
        self.logits = self._forward(ids)

    def step(self, tokens: torch.Tensor, active: Sequence[bool]) -> torch.Tensor:
        self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], dim=1)
        self.positions = self.positions[:, -1:] + 1
        self.logits = self._forward(tokens.view(-1, 1))
        return self.logits

    def _forward(self, ids: torch.Tensor) -> torch.Tensor:
        decoder = self.decoder
        kwargs: dict[str, Any] = {
            "input_ids": ids,
            "attention_mask": self.mask,
            "position_ids": self.positions,
            decoder.cache_argument: self.cache,
            "use_cache": True,
        }
        if decoder.keeps_last_logits:
            kwargs["logits_to_keep"] = 1
        decoder.routing.route(self.slots, self.device)
        try:
            output = decoder.model(**kwargs)
        finally:
            decoder.routing.clear()
        return output.logits[:, -1].float()
