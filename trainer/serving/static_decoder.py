"""Llama-family decoding with a static KV cache; on a GPU every decode step is one replayed CUDA graph.

Eager decoding of a 4-bit 7B model is launch-bound: ~16 tokens/s on an H200, thousands of small kernels
and bitsandbytes' Python wrappers per token, and an unmerged LoRA adds hundreds more. A captured graph
replays the whole step from the GPU's own queue. The step is written here, on the model's own modules
(norms, projections, MLP, rotary tables), because transformers' mask and cache code syncs with the host
and cannot be captured. A batch's prompts are prefilled together, right-padded. On a GPU with Triton the
decode step's linear layers run through kernel_layers.py (few-row 4-bit kernels, LoRA beside them).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from trainer.serving import kernel_layers
from trainer.serving.decoders import Session
from trainer.serving.lora import BASE_SLOT, LoraBank, slot_ids
from trainer.serving.nf4_matmul import MAX_ROWS

log = logging.getLogger(__name__)

FAMILIES = ("llama", "mistral", "qwen2")  # decoder layers of the same shape: norm, attention, norm, MLP
STATIC_ROPE = ("default", "linear", "llama3", "yarn")  # rotary tables that do not depend on the length
MIN_LENGTH = 256  # shortest cache: fewer, reusable graphs
PREFILL_TOKENS = 8192  # padded prompt tokens per prefill forward (activations grow with rows x length)
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
    def __init__(self, model: Any, bank: LoraBank, *, use_graphs: bool, max_arenas: int = 4) -> None:
        self.model = model
        self.bank = bank
        self.routing = bank.routing
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
        # On a GPU with Triton, decode steps of up to MAX_ROWS rows run the linear layers through the
        # few-row 4-bit kernels, LoRA on a second stream (kernel_layers.py); None: the modules alone (also the
        # case with CUDA graphs switched off, the plainest path for debugging).
        self.kernels = kernel_layers.build(model, bank) if self.use_graphs else None

    def start(self, prompts: Sequence[Sequence[int]], slots: Sequence[int | None], length: int) -> Session:
        rows = 1 << (len(prompts) - 1).bit_length()
        size = max(MIN_LENGTH, 1 << (length - 1).bit_length())
        size = max(length, min(size, self.max_positions))
        return _StaticSession(self, self._arena(rows, size), prompts, slots)

    def prefill(
        self, arena: _Arena, prompts: Sequence[Sequence[int]], slots: Sequence[int | None]
    ) -> torch.Tensor:
        """Run the rows' prompts and fill their cache; the logits (rows, vocab) of each row's last position.

        Rows go through together, right-padded to the longest (at most PREFILL_TOKENS padded tokens per
        forward): causal attention keeps the padding out of every real position, and a row's first decode
        step writes over its padded cache entries before any step can see them."""
        chunks = _chunks([len(ids) for ids in prompts], PREFILL_TOKENS)
        return torch.cat(
            [self._prefill_rows(arena, rows.start, prompts[rows], slots[rows]) for rows in chunks]
        )

    def _prefill_rows(
        self, arena: _Arena, first: int, prompts: Sequence[Sequence[int]], slots: Sequence[int | None]
    ) -> torch.Tensor:
        count, longest = len(prompts), max(len(ids) for ids in prompts)
        tokens = torch.tensor([[*ids, *[0] * (longest - len(ids))] for ids in prompts], device=self.device)
        cos, sin = arena.cos[:longest].view(1, 1, longest, -1), arena.sin[:longest].view(1, 1, longest, -1)
        self.routing.route(list(slots), self.device)
        try:
            hidden = self.embed(tokens)
            for index, layer in enumerate(self.layers):
                x = layer.input_layernorm(hidden)
                q, k, v = self._project(layer.self_attn, x, cos, sin)
                arena.keys[index][first : first + count, :, :longest].copy_(k)
                arena.values[index][first : first + count, :, :longest].copy_(v)
                out = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, scale=self.scaling, enable_gqa=self.kv_heads != self.heads
                )
                hidden = self._finish_layer(layer, hidden, out)
            last = torch.tensor([len(ids) - 1 for ids in prompts], device=self.device)
            return self.head(self.norm(hidden[torch.arange(count, device=self.device), last])).float()
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
        kernels = self.kernels if rows <= MAX_ROWS else None
        routed = self.routing.slot is not None or self.routing.row_slots is not None
        slots = arena.slots if routed else None
        for index, layer in enumerate(self.layers):
            x = layer.input_layernorm(hidden)
            if kernels is None:
                q, k, v = self._project(layer.self_attn, x, cos, sin)
            else:
                q, k, v = kernels.run(index, kernel_layers.QKV, self.bank, x.view(rows, -1), slots)
                q, k, v = self._heads(q.view(rows, 1, -1), k.view(rows, 1, -1), v.view(rows, 1, -1), cos, sin)
            keys, values = arena.keys[index], arena.values[index]
            keys.scatter_(2, where, k)
            values.scatter_(2, where, v)
            out = F.scaled_dot_product_attention(
                q, keys, values, attn_mask=visible, scale=self.scaling, enable_gqa=self.kv_heads != self.heads
            )
            if kernels is None:
                hidden = self._finish_layer(layer, hidden, out)
            else:
                hidden = self._finish_layer_by_kernels(kernels, index, layer, hidden, out, slots)
        return self.head(self.norm(hidden))[:, -1]

    def _project(
        self, attention: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._heads(attention.q_proj(x), attention.k_proj(x), attention.v_proj(x), cos, sin)

    def _heads(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(rows, count, features) projections -> rotated (rows, heads, count, head_dim) ones."""
        rows, count, _ = q.shape
        q = q.view(rows, count, self.heads, self.head_dim).transpose(1, 2)
        k = k.view(rows, count, self.kv_heads, self.head_dim).transpose(1, 2)
        v = v.view(rows, count, self.kv_heads, self.head_dim).transpose(1, 2)
        return _rotate(q, cos, sin), _rotate(k, cos, sin), v

    def _finish_layer(self, layer: Any, hidden: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
        rows, _, count, _ = attended.shape
        hidden = hidden + layer.self_attn.o_proj(attended.transpose(1, 2).reshape(rows, count, -1))
        return hidden + layer.mlp(layer.post_attention_layernorm(hidden))

    def _finish_layer_by_kernels(
        self,
        kernels: kernel_layers.KernelLayers,
        index: int,
        layer: Any,
        hidden: torch.Tensor,
        attended: torch.Tensor,
        slots: torch.Tensor | None,
    ) -> torch.Tensor:
        """_finish_layer for one token per row, its linear layers run by the kernels."""
        rows = hidden.shape[0]
        (projected,) = kernels.run(
            index, kernel_layers.OUT, self.bank, attended.transpose(1, 2).reshape(rows, -1), slots
        )
        hidden = hidden + projected.view(rows, 1, -1)
        x = layer.post_attention_layernorm(hidden).view(rows, -1)
        gate, up = kernels.run(index, kernel_layers.GATE_UP, self.bank, x, slots)
        (down,) = kernels.run(index, kernel_layers.DOWN, self.bank, layer.mlp.act_fn(gate) * up, slots)
        return hidden + down.view(rows, 1, -1)

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
        self.logits = decoder.prefill(arena, prompts, slots)
        self.advance_mask: list[int] = []  # which rows the last step advanced, and that mask on the GPU
        self.advance: torch.Tensor | None = None

    def step(self, tokens: torch.Tensor, active: Sequence[bool]) -> torch.Tensor:
        arena, count = self.arena, self.count
        arena.tokens[:count].copy_(tokens)
        logits = self.decoder.decode(arena, self.route)
        # A finished row stays where it is, so a long answer beside it never runs it past the cache. The
        # mask is copied to the GPU only when it changes: a copy from host memory waits for the GPU, and
        # the caller queues the next step before reading this one's tokens (streaming.run_rows).
        mask = [int(a) for a in active] + [0] * (arena.rows - count)
        if self.advance is None or mask != self.advance_mask:
            self.advance_mask, self.advance = mask, torch.tensor(mask, device=arena.tokens.device)
        arena.positions.add_(self.advance)
        self.logits = logits[:count].float()
        return self.logits


def _chunks(lengths: Sequence[int], cap: int) -> list[slice]:
    """Consecutive rows whose count times their longest length stays within `cap` (one row at least)."""
    chunks, start = [], 0
    while start < len(lengths):
        end = start + 1
        while end < len(lengths) and (end + 1 - start) * max(lengths[start : end + 1]) <= cap:
            end += 1
        chunks.append(slice(start, end))
        start = end
    return chunks


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin
