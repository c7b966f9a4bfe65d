"""Llama-family decoding with a static KV cache; on a GPU every decode step is one replayed CUDA graph.

Eager decoding of a 4-bit 7B model is launch-bound: ~16 tokens/s on an H200, thousands of small kernels
and bitsandbytes' Python wrappers per token, and an unmerged LoRA adds hundreds more. A captured graph
replays the whole step from the GPU's own queue. The step is written here, on the model's own modules
(norms, projections, MLP, rotary tables), because transformers' mask and cache code syncs with the host
and cannot be captured. Prompts are prefilled one row at a time, so a row's prompt is computed exactly as
it would be alone.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trainer.serving.decoders import Session
from trainer.serving.lora import BASE_SLOT, LoraRouting, slot_ids

log = logging.getLogger(__name__)

FAMILIES = ("llama", "mistral", "qwen2")  # decoder layers of the same shape: norm, attention, norm, MLP
STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # rotary tables that do not depend on the length
MIN_LENGTH = 256  # shortest cache: fewer, reusable graphs
MIXED = "mixed"
Route = int | str | None  # how a step's rows reach their adapters (see _StaticSession)


def unsupported_reason(model: Any) -> str | None:
    """Why this model must use the generic decoder, or None when the static one can run it."""
    config = model.config
    if getattr(config, "model_type", None) not in FAMILIES:
        return f"model type {getattr(config, 'model_type', None)!r} is not one of {FAMILIES}"
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in STATIC_ROPE:
        return f"rope type {rope_type!r} scales with the length"
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and window < config.max_position_embeddings:
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None or not hasattr(inner, "rotary_emb") or not hasattr(inner, "embed_tokens"):
        return "an unexpected module layout"
    attention = layers[0].self_attn
    if any(hasattr(attention, name) for name in ("q_norm", "k_norm")):
        return "per-head query/key norms"
    return None


@dataclass(eq=False)
class _Arena:
    """The static cache for `rows` rows of up to `length` tokens, the step's inputs, and its graphs."""

    rows: int
    length: int
    keys: list[torch.Tensor]  # per layer (rows, kv_heads, length, head_dim)
    values: list[torch.Tensor]
    cos: torch.Tensor  # (length, head_dim) rotary tables
    sin: torch.Tensor
    key_index: torch.Tensor  # (length,) 0..length-1
    tokens: torch.Tensor  # (rows,) the token each row feeds next
    positions: torch.Tensor  # (rows,) where it goes
    slots: torch.Tensor  # (rows,) each row's adapter slot
    graphs: dict[tuple[Route, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in [*self.keys, *self.values])


class StaticDecoder:
    def __init__(self, model: Any, routing: LoraRouting, *, use_graphs: bool, max_arenas: int = 4) -> None:
        self.model = model
        self.routing = routing
        inner = model.model
        self.embed, self.layers, self.norm, self.head = (
            inner.embed_tokens,
            inner.layers,
            inner.norm,
            model.lm_head,
        )
        self.rotary = inner.rotary_emb
        attention = self.layers[0].self_attn
        self.heads = model.config.num_attention_heads
        self.kv_heads = model.config.num_key_value_heads
        self.head_dim = attention.head_dim
        self.scaling = attention.scaling
        self.max_positions = model.config.max_position_embeddings
        self.dtype = self.embed.weight.dtype
        self.device = self.embed.weight.device
        self.use_graphs = use_graphs and self.device.type == "cuda"
        self.max_arenas = max_arenas
        self.arenas: OrderedDict[tuple[int, int], _Arena] = OrderedDict()  # least recently used first

    def start(self, prompts: Sequence[Sequence[int]], slots: Sequence[int | None], length: int) -> Session:
        rows = 1 << (len(prompts) - 1).bit_length()
        size = max(MIN_LENGTH, 1 << (length - 1).bit_length())
        size = max(length, min(size, self.max_positions))
        return _StaticSession(self, self._arena(rows, size), prompts, slots)

    def prefill(self, arena: _Arena, row: int, ids: Sequence[int], slot: int | None) -> torch.Tensor:
        """Run one row's prompt, fill its cache; the logits (1, vocab) of its last position."""
        count = len(ids)
        tokens = torch.tensor([list(ids)], device=self.device)
        cos, sin = arena.cos[:count].view(1, 1, count, -1), arena.sin[:count].view(1, 1, count, -1)
        self.routing.route([slot], self.device)
        try:
            hidden = self.embed(tokens)
            for index, layer in enumerate(self.layers):
                x = layer.input_layernorm(hidden)
                q, k, v = self._project(layer.self_attn, x, cos, sin)
                arena.keys[index][row : row + 1, :, :count].copy_(k)
                arena.values[index][row : row + 1, :, :count].copy_(v)
                out = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, scale=self.scaling, enable_gqa=self.kv_heads != self.heads
                )
                hidden = self._finish_layer(layer, hidden, out)
            return self.head(self.norm(hidden[:, -1:]))[:, -1].float()
        finally:
            self.routing.clear()

    def decode(self, arena: _Arena, route: Route) -> torch.Tensor:
        """One step for every row of the arena (its tokens at its positions); logits (rows, vocab)."""
        if not self.use_graphs:
            return self._routed_step(arena, route)
        key = (route, self.routing.version)
        if key not in arena.graphs:
            try:
                arena.graphs = {k: g for k, g in arena.graphs.items() if k[1] == self.routing.version}
                arena.graphs[key] = self._capture(arena, route)
            except Exception:
                log.warning("capturing the decode step failed; decoding without CUDA graphs", exc_info=True)
                self.use_graphs = False
                return self._routed_step(arena, route)
        graph, logits = arena.graphs[key]
        graph.replay()
        return logits

    # --- internals

    def _routed_step(self, arena: _Arena, route: Route) -> torch.Tensor:
        self._route(arena, route)
        try:
            return self._step(arena)
        finally:
            self.routing.clear()

    def _route(self, arena: _Arena, route: Route) -> None:
        self.routing.clear()
        if route == MIXED:
            self.routing.row_slots = arena.slots
        elif isinstance(route, int):
            self.routing.slot = route

    def _step(self, arena: _Arena) -> torch.Tensor:
        rows = arena.rows
        positions = arena.positions
        hidden = self.embed(arena.tokens.view(rows, 1))
        cos = arena.cos.index_select(0, positions).view(rows, 1, 1, -1)
        sin = arena.sin.index_select(0, positions).view(rows, 1, 1, -1)
        visible = (arena.key_index.view(1, -1) <= positions.view(-1, 1)).view(rows, 1, 1, arena.length)
        where = positions.view(rows, 1, 1, 1).expand(rows, self.kv_heads, 1, self.head_dim)
        for index, layer in enumerate(self.layers):
            x = layer.input_layernorm(hidden)
            q, k, v = self._project(layer.self_attn, x, cos, sin)
            keys, values = arena.keys[index], arena.values[index]
            keys.scatter_(2, where, k)
            values.scatter_(2, where, v)
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=visible, scale=self.scaling, enable_gqa=self.kv_heads != self.heads
            )
            hidden = self._finish_layer(layer, hidden, out)
        return self.head(self.norm(hidden))[:, -1]

    def _project(
        self, attention: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, count, _ = x.shape
        q = attention.q_proj(x).view(rows, count, self.heads, self.head_dim).transpose(1, 2)
        k = attention.k_proj(x).view(rows, count, self.kv_heads, self.head_dim).transpose(1, 2)
        v = attention.v_proj(x).view(rows, count, self.kv_heads, self.head_dim).transpose(1, 2)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def _finish_layer(self, layer: Any, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        rows, _, count, _ = attended.shape
        hidden = hidden + layer.self_attn.o_proj(attended.transpose(1, 2).reshape(rows, count, -1))
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def _capture(self, arena: _Arena, route: Route) -> tuple[torch.cuda.CUDAGraph, torch.Tensor]:
        # Warm-up on a side stream first (cuBLAS and bitsandbytes set up workspaces on first use). The
        # warm-up writes the cache at the rows' current positions, which the real step overwrites next.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._routed_step(arena, route)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        self._route(arena, route)
        try:
            # A private memory pool per graph: sharing one per arena tripped an allocator assertion (torch
            # 2.11) after every graph of the pool had been dropped (a new adapter reallocates the stacks).
            with torch.cuda.graph(graph):
                logits = self._step(arena)
        finally:
            self.routing.clear()
        log.info("captured the decode step for %d rows x %d tokens (%s)", arena.rows, arena.length, route)
        return graph, logits

    def _arena(self, rows: int, length: int) -> _Arena:
        key = (rows, length)
        arena = self.arenas.get(key)
        if arena is not None:
            self.arenas.move_to_end(key)
            return arena
        while len(self.arenas) >= self.max_arenas:
            self.arenas.popitem(last=False)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()  # an evicted arena's cache and graph pool go back first
        shape = (rows, self.kv_heads, length, self.head_dim)
        layers = len(self.layers)
        like = torch.zeros(1, 1, 1, dtype=self.dtype, device=self.device)
        cos, sin = self.rotary(like, torch.arange(length, device=self.device).view(1, -1))
        arena = _Arena(
            rows=rows,
            length=length,
            keys=[torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(layers)],
            values=[torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(layers)],
            cos=cos[0].to(self.dtype),
            sin=sin[0].to(self.dtype),
            key_index=torch.arange(length, device=self.device),
            tokens=torch.zeros(rows, dtype=torch.long, device=self.device),
            positions=torch.zeros(rows, dtype=torch.long, device=self.device),
            slots=torch.full((rows,), BASE_SLOT, dtype=torch.long, device=self.device),
        )
        self.arenas[key] = arena
        log.info("static cache for %d rows x %d tokens: %.1f MiB", rows, length, arena.nbytes / 2**20)
        return arena


class _StaticSession:
    def __init__(
        self,
        decoder: StaticDecoder,
        arena: _Arena,
        prompts: Sequence[Sequence[int]],
        slots: Sequence[int | None],
    ) -> None:
        self.decoder, self.arena, self.count = decoder, arena, len(prompts)
        distinct = set(slots)
        # None: the base model alone; a slot: every row uses that adapter; MIXED: each row its own.
        self.route: Route = MIXED if len(distinct) > 1 else slots[0]
        padding = [BASE_SLOT] * (arena.rows - self.count)  # unused rows of the arena decode a dummy token
        device = decoder.device
        arena.slots.copy_(torch.tensor(slot_ids(slots) + padding, device=device))
        arena.tokens.zero_()
        arena.positions.copy_(torch.tensor([len(ids) for ids in prompts] + [0] * len(padding), device=device))
        self.logits = torch.cat(
            [
                decoder.prefill(arena, row, ids, slot)
                for row, (ids, slot) in enumerate(zip(prompts, slots, strict=True))
            ]
        )

    def step(self, tokens: torch.Tensor, active: Sequence[bool]) -> torch.Tensor:
        arena, count = self.arena, self.count
        arena.tokens[:count].copy_(tokens)
        logits = self.decoder.decode(arena, self.route)
        # A finished row stays where it is, so a long answer beside it never runs it past the cache.
        advance = torch.tensor(
            [int(a) for a in active] + [0] * (arena.rows - count), device=arena.tokens.device
        )
        arena.positions.add_(advance)
        self.logits = logits[:count].float()
        return self.logits


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
