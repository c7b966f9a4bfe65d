"""A Llama-family decoder layer's linear layers as the decode step runs them on a GPU with Triton.

Layers that read one input (q/k/v, gate/up) are joined into one 4-bit weight, a layer alone (o, down) is
its own group; each group is run by the few-row kernel (nf4_matmul.py), or by bitsandbytes where that times
faster at load. Every group's LoRA runs on a second stream beside its base product. Prefill and batches
over MAX_ROWS rows use the modules as they are. The groups are timed with rank-16 adapters; a larger rank
compiles its kernels when its first decode step is captured.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch

from trainer.serving import nf4_matmul
from trainer.serving.lora import LoraBank

log = logging.getLogger(__name__)

# Within a decoder layer: the groups of linear layers that read one input, in the order the step runs them.
QKV = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")
OUT = ("self_attn.o_proj",)
GATE_UP = ("mlp.gate_proj", "mlp.up_proj")
DOWN = ("mlp.down_proj",)
GROUPS = (QKV, OUT, GATE_UP, DOWN)
# Which product is faster depends on the GPU, the shape and the rows: each group times the candidates below
# against bitsandbytes at load, in CUDA graphs as the decode step replays them, and keeps the fastest. Four
# tiles came within 1.3% of the best of bench/nf4_matmul.py's sweep for every 7B group at 1 and 4 rows on an
# H200, where the kernel beat bitsandbytes on all of them (us per call, 1 row / 4 rows): q/k/v 18.9 / 30.0
# (bitsandbytes 32.2 / 71.7), o 8.9 / 13.9 (10.6 / 23.7), gate/up 34.0 / 58.5 (47.3 / 132.5), down 17.5 / 27.1
# (23.5 / 58.3). Narrow layers (4096 outputs) want K split: too few tiles for 132 SMs otherwise.
CANDIDATES = (
    nf4_matmul.KernelConfig(block_n=16, warps=2),
    nf4_matmul.KernelConfig(block_n=64, warps=4),
    nf4_matmul.KernelConfig(block_n=64, warps=4, split=2),
    nf4_matmul.KernelConfig(block_n=64, warps=4, split=4),
)
WARM_ROWS = (1, 2, 4)  # the arena sizes of a decode step with up to MAX_ROWS rows
Choice = nf4_matmul.KernelConfig | None  # a kernel tile, or None: bitsandbytes' product


@dataclass(eq=False)
class _Group:
    names: tuple[str, ...]  # the bank's names of the group's layers
    modules: list[Any]  # their LoraLinear wrappers
    packed: nf4_matmul.PackedWeight  # the layers' weights joined, as the kernel reads them
    sizes: list[int]
    choices: dict[tuple[int, bool], Choice] = field(default_factory=dict)  # (rows, LoRA) -> the fastest

    def __call__(self, bank: LoraBank, x: torch.Tensor, slots: torch.Tensor | None) -> torch.Tensor:
        """x (rows, in) -> (rows, total out); with each row's adapter when `slots` is given."""
        lora = None
        if slots is not None:
            stack = bank.stack(self.names[0])
            if stack is not None:
                lora = nf4_matmul.GroupLora(stack[0], stack[1], bank.rank, slots)
        return self._run(x, lora, self.choices.get((x.shape[0], lora is not None)))

    def _run(self, x: torch.Tensor, lora: nf4_matmul.GroupLora | None, choice: Choice) -> torch.Tensor:
        """The base product by `choice`, plus the rows' LoRA (if any) made beside it."""
        if lora is None:
            return self._product(x, choice)
        return nf4_matmul.with_lora_beside(partial(self._product, x, choice), x, lora, tuple(self.sizes))

    def _product(self, x: torch.Tensor, choice: Choice) -> torch.Tensor:
        if choice is not None:
            return nf4_matmul.matmul(x, self.packed, choice)
        outs = [module.base(x) for module in self.modules]
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def tune(self, rank: int) -> None:
        """Pick the fastest product for every row count, with and without LoRA. Running each candidate also
        compiles it now: Triton compiles on first use, which would stall a first mixed batch by seconds."""
        k = self.modules[0].in_features
        device = self.modules[0].base.weight.device
        dtype = self.modules[0].base.weight.quant_state.dtype
        a = torch.randn(2, k, rank * len(self.sizes), dtype=dtype, device=device) * 0.01
        b = torch.randn(2, rank, sum(self.sizes), dtype=dtype, device=device) * 0.01
        options: list[Choice] = [None, *(c for c in CANDIDATES if self.packed.fits(c))]
        for rows in WARM_ROWS:
            x = torch.randn(rows, k, dtype=dtype, device=device)
            lora = nf4_matmul.GroupLora(a, b, rank, torch.ones(rows, dtype=torch.long, device=device))
            for with_lora in (False, True):
                timings = {}
                for option in options:
                    try:
                        timings[option] = graph_us(partial(self._run, x, lora if with_lora else None, option))
                    except Exception as error:  # a tile this GPU cannot fit (shared memory, registers)
                        if option is None:
                            raise
                        log.info("tile %s skipped: %s", option, str(error).splitlines()[0][:200])
                best = min(timings, key=lambda option: timings[option])
                self.choices[(rows, with_lora)] = best
                name = "+".join(name.rsplit(".", 1)[-1] for name in self.names)
                log.info(
                    "%s, %d rows%s: %s (%.1f us; bitsandbytes %.1f us)", name, rows,
                    " with LoRA" if with_lora else "", best or "bitsandbytes", timings[best], timings[None],
                )  # fmt: skip


def graph_us(run: Callable[[], Any], calls: int = 8, replays: int = 3) -> float:
    """Microseconds per call of `run`, replayed from a CUDA graph as the decode step runs it."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            run()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            run()
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(replays):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000 / (calls * replays)


class KernelLayers:
    """Every decoder layer's groups, built once per base model (the weights are joined in place)."""

    def __init__(self, groups: list[list[_Group]]) -> None:
        self.layers = groups

    def run(
        self, index: int, group: tuple[str, ...], bank: LoraBank, x: torch.Tensor, slots: torch.Tensor | None
    ) -> tuple[torch.Tensor, ...]:
        """Group `group` (one of GROUPS) of layer `index`, split back into its layers' outputs."""
        entry = self.layers[index][GROUPS.index(group)]
        out = entry(bank, x, slots)
        return out.split(entry.sizes, dim=-1) if len(entry.sizes) > 1 else (out,)


def build(model: Any, bank: LoraBank) -> KernelLayers | None:
    """Join the decoder's 4-bit layers for the kernels, or None (with the reason logged) when this model or
    machine cannot run them; the bank then keeps every layer's LoRA on its own."""
    device = model.get_input_embeddings().weight.device
    if not nf4_matmul.available(device):
        return None
    prefixes = sorted(
        {name.rsplit(".", 2)[0] for name in bank.layers if ".layers." in f".{name}"}, key=_layer_order
    )
    plans = []
    for prefix in prefixes:
        plan = []
        for group in GROUPS:
            full = tuple(f"{prefix}.{member}" for member in group)
            if any(name not in bank.layers for name in full):
                log.info("serving kernels off: %s lacks %s", prefix, full)
                return None
            modules = [bank.layers[name] for name in full]
            reason = nf4_matmul.unpackable_reason([module.base for module in modules])
            if reason is not None:
                log.info("serving kernels off: %s", reason)
                return None
            plan.append((full, modules))
        plans.append(plan)
    layers = []
    for plan in plans:
        layer = []
        for full, modules in plan:
            packed = nf4_matmul.pack_linears([m.base for m in modules])
            layer.append(_Group(full, modules, packed, [m.out_features for m in modules]))
        layers.append(layer)
    bank.join([group.names for layer in layers for group in layer])
    for position, group in enumerate(layers[0]):  # every layer has the same shapes: one is timed for all
        group.tune(rank=16)
        for layer in layers[1:]:
            layer[position].choices = group.choices
    log.info("serving kernels on: %d decoder layers, q/k/v and gate/up joined", len(layers))
    return KernelLayers(layers)


def _layer_order(prefix: str) -> Sequence[Any]:
    return [int(part) if part.isdigit() else part for part in prefix.split(".")]
