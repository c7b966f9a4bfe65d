"""How each row picks its next token: greedy, or sampled with its own temperature, top-p and seed.

Each sampled row draws from its own generator, so its answer depends on its seed alone, never on the
requests it happened to be batched with.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch


class RowSampler:
    def __init__(self, temperature: float, top_p: float, seed: int | None, device: torch.device) -> None:
        self.greedy = temperature <= 0
        self.temperature = temperature
        self.top_p = top_p
        self.generator: torch.Generator | None = None
        if not self.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed if seed is not None else random.getrandbits(63))

    def sample(self, logits: torch.Tensor) -> torch.Tensor:
        """One token id (a 1-element tensor) from one row's logits (vocab,)."""
        probs = torch.softmax(logits.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            ordered, order = torch.sort(probs, descending=True)
            before = ordered.cumsum(-1) - ordered  # mass of the more likely tokens
            ordered = ordered.masked_fill(before >= self.top_p, 0.0)  # the most likely one always stays
            probs = torch.zeros_like(probs).scatter_(-1, order, ordered)
        return torch.multinomial(probs, 1, generator=self.generator)


def next_tokens(logits: torch.Tensor, samplers: Sequence[RowSampler]) -> torch.Tensor:
    """Every row's next token ((rows,) int64) from the rows' logits (rows, vocab)."""
    chosen = logits.argmax(dim=-1)
    for row, sampler in enumerate(samplers):
        if not sampler.greedy:
            chosen[row] = sampler.sample(logits[row])[0]
    return chosen
