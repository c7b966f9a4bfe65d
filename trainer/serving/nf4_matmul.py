"""Few-row matmuls on bitsandbytes 4-bit weights through nf4_kernels.py, and each row's LoRA beside them.

`pack_linears` joins the 4-bit layers that read one input (q/k/v, gate/up) into one weight, so a decode
step launches one kernel per group instead of one per layer; the layers keep working on their own, as
views of the joined bytes (no second copy of the weights). `matmul` runs up to MAX_ROWS rows;
`lora_product` makes each row's own adapter's product (a shrink and an expand kernel), `with_lora_beside`
adds it to a base product made at the same time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

MAX_ROWS = 4  # rows the kernel accumulates separately; more go through bitsandbytes (prefill)
STEP = 256  # nf4_kernels.STEP (that module imports Triton): K must be a multiple
SHRINK_BLOCK_K = 256


def available(device: torch.device) -> bool:
    """Whether the Triton kernels can run here: a CUDA device and Triton installed."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True)
class KernelConfig:
    block_n: int  # outputs per program
    warps: int
    split: int = 1  # K slices run by separate programs, their sums added by each tile's last slice


def default_config(rows: int, n: int, k: int) -> KernelConfig:
    """A tile for a shape when the caller names none (the serve worker times candidates instead): from
    bench/nf4_matmul.py's sweep on an H200 with 7B shapes, narrow layers (4096 outputs: too few tiles for
    132 SMs) split K in four, wider ones take 64-wide tiles for one row and 16-wide for more."""
    if n <= 4096:
        return KernelConfig(block_n=64, warps=4, split=min(4, k // STEP))
    return KernelConfig(block_n=64, warps=4) if rows == 1 else KernelConfig(block_n=16, warps=2)


@dataclass(eq=False)
class PackedWeight:
    """One or more 4-bit linear layers sharing an input, as one (N, K) weight."""

    codes: torch.Tensor  # (N, K // 2) uint8, bitsandbytes' bytes
    scales: torch.Tensor  # (N * K // group,) float16: every block's scale, double quantization undone
    pairs: torch.Tensor  # (256,) int32: each byte's two code values as bfloat16 bits (high nibble first)
    group: int
    members: tuple[int, ...]  # each layer's output size, in order
    # (N,) int32 zeros: the split kernel's per-tile count of finished K slices, back to zero after each call.
    # Calls on one weight never overlap: one generation thread decodes on one stream (engine.py).
    counters: torch.Tensor

    @property
    def n(self) -> int:
        return self.codes.shape[0]

    @property
    def k(self) -> int:
        return self.codes.shape[1] * 2

    def fits(self, config: KernelConfig) -> bool:
        """Whether the kernel can run this weight in `config`'s tiles: every layer's outputs in whole tiles,
        K in whole steps and at least one step per K slice."""
        whole_tiles = all(size % config.block_n == 0 for size in self.members)
        return whole_tiles and self.k % STEP == 0 and 1 <= config.split <= self.k // STEP


@functools.cache
def rank_offsets(members: tuple[int, ...], block_n: int, rank: int, device: torch.device) -> torch.Tensor:
    """(tiles,) int32: for each N tile of the joined outputs, where its layer's LoRA rows start in the
    group's shrink (layer index * rank). Every layer's size is a multiple of block_n."""
    owner = [index * rank for index, size in enumerate(members) for _ in range(size // block_n)]
    return torch.tensor(owner, dtype=torch.int32, device=device)


def unpackable_reason(modules: Sequence[Any]) -> str | None:
    """Why these layers cannot be joined and run by the kernels, or None."""
    first = getattr(getattr(modules[0], "weight", None), "quant_state", None)
    for module in modules:
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is None:
            return f"{type(module).__name__} is not a bitsandbytes 4-bit layer"
        if getattr(module, "bias", None) is not None:
            return "a linear layer with a bias"
        n, k = state.shape
        if n % 64:
            return f"output size {n} is not a multiple of 64"
        if k % STEP:
            return f"input size {k} is not a multiple of {STEP}"
        if state.blocksize not in (32, 64, 128, 256):
            return f"quantization block {state.blocksize} (the kernels take 32 to 256)"
        if state.dtype not in (torch.bfloat16, torch.float16):
            return f"compute dtype {state.dtype} (the kernels take bfloat16 or float16 inputs)"
        if state.shape[1] != first.shape[1] or state.blocksize != first.blocksize:
            return "layers of one group differ in input size or quantization block"
        if not torch.equal(state.code, first.code):
            return "layers of one group use different 4-bit code books"
    return None


def pack_linears(modules: Sequence[Any]) -> PackedWeight:
    """Join bitsandbytes Linear4bit layers with one input into one weight. Each layer's own weight becomes
    a view of the joined bytes: bitsandbytes' forward (prefill) keeps working, nothing is held twice."""
    import bitsandbytes.functional as bnb_functional

    states = [module.weight.quant_state for module in modules]
    members = tuple(int(state.shape[0]) for state in states)
    k = int(states[0].shape[1])
    device = modules[0].weight.device
    codes = torch.empty(sum(members), k // 2, dtype=torch.uint8, device=device)
    scales = []
    row = 0
    for module, state, size in zip(modules, states, members, strict=True):
        codes[row : row + size].copy_(module.weight.data.view(size, k // 2))
        module.weight.data = codes[row : row + size].view(-1, 1)
        absmax = state.absmax
        if state.nested:
            absmax = bnb_functional.dequantize_blockwise(state.absmax, state.state2) + state.offset
        scales.append(absmax.float().to(torch.float16))
        row += size
    counters = torch.zeros(codes.shape[0], dtype=torch.int32, device=device)  # every tile width fits
    pairs = code_pairs(states[0].code)
    return PackedWeight(codes, torch.cat(scales), pairs, states[0].blocksize, members, counters)


def code_pairs(code: torch.Tensor) -> torch.Tensor:
    """(256,) int32: for every byte, bfloat16 bits of its high nibble's value << 16 | its low nibble's."""
    bits = code.float().to(torch.bfloat16).view(torch.int16).to(torch.int64) & 0xFFFF
    byte = torch.arange(256, device=code.device)
    pairs = (bits[byte >> 4] << 16) | bits[byte & 15]
    return torch.where(pairs >= 2**31, pairs - 2**32, pairs).to(torch.int32)


@dataclass(frozen=True)
class GroupLora:
    """The stacked LoRA matrices of a group's layers and the rows' slots, as the kernels read them."""

    a: torch.Tensor  # (slots, K, members * rank): every layer's A^T side by side
    b: torch.Tensor  # (slots, rank, N): every layer's B^T (scaled) side by side
    rank: int  # a power of two, at least 16
    slots: torch.Tensor  # (rows,) int64, a slot per row (the zero slot adds nothing)


def matmul(x: torch.Tensor, weight: PackedWeight, config: KernelConfig | None = None) -> torch.Tensor:
    """x (rows <= MAX_ROWS, K) @ W^T: (rows, N) in x's dtype."""
    from trainer.serving import nf4_kernels

    rows, k = x.shape
    n = weight.n
    if rows > MAX_ROWS or k != weight.k:
        raise ValueError(f"nf4 matmul takes up to {MAX_ROWS} rows of {weight.k} values, got {tuple(x.shape)}")
    config = config or default_config(rows, n, k)
    if not weight.fits(config):
        raise ValueError(f"tile {config} does not divide the weight ({n}, {k})")
    x = x.contiguous()
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    partial = out  # a placeholder: one slice writes no partial sums
    if config.split > 1:
        partial = torch.empty(config.split, rows, n, dtype=torch.float32, device=x.device)
    nf4_kernels.nf4_matmul_kernel[(n // config.block_n, config.split)](
        x, x.stride(0), weight.codes.view(torch.int32), weight.scales, weight.pairs, out, out.stride(0),
        partial, weight.counters, n, k, 1, ROWS=rows, GROUP=weight.group, BLOCK_N=config.block_n,
        SPLIT=config.split, num_warps=config.warps, num_stages=2,
    )  # fmt: skip
    return out


def lora_product(x: torch.Tensor, lora: GroupLora, members: tuple[int, ...]) -> torch.Tensor:
    """Each row's LoRA product of x (rows, K): (rows, N), for layers whose outputs (sizes `members`) sit side
    by side."""
    from trainer.serving import nf4_kernels

    rows, n = x.shape[0], sum(members)
    block_n = 64
    if any(size % block_n for size in members):
        raise ValueError(f"LoRA outputs {members} must be multiples of {block_n}")
    x = x.contiguous()
    out = torch.empty(rows, n, dtype=x.dtype, device=x.device)
    partial, split = _shrink(x, lora)
    offsets = rank_offsets(members, block_n, lora.rank, out.device)
    nf4_kernels.lora_expand_kernel[(n // block_n, rows)](
        out, out.stride(0), partial, lora.b, lora.b.stride(0), lora.slots, offsets, rows, n, split,
        lora.a.shape[2], R=lora.rank, BLOCK_N=block_n, num_warps=4,
    )  # fmt: skip
    return out


def with_lora_beside(
    product: Callable[[], torch.Tensor], x: torch.Tensor, lora: GroupLora, members: tuple[int, ...]
) -> torch.Tensor:
    """product() + each row's LoRA of x (lora_product's layout), the LoRA made on a second stream while the
    product runs. Its two small kernels cost ~3.5 us each in a decode step, mostly latency: after the
    product (or fused into the kernel) they added ~13% to a one-row step; as a parallel branch of the
    captured graph they hide behind the memory-bound product (bench/RESULTS.md)."""
    # The order keeps the caching allocator safe without record_stream: the side stream starts after the
    # main stream's work so far, and the main stream waits for it before anything reads `delta` or can
    # free `x`. Captured, the fork and the join become edges of the graph.
    main, side = torch.cuda.current_stream(x.device), _side_stream(x.device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        delta = lora_product(x, lora, members)
    out = product()
    main.wait_stream(side)
    return out.add_(delta)


@functools.cache
def _side_stream(device: torch.device) -> torch.cuda.Stream:
    return torch.cuda.Stream(device)


def _shrink(x: torch.Tensor, lora: GroupLora) -> tuple[torch.Tensor, int]:
    """Per K slice partial products x @ A[slot] of every row: (splits, rows, members * rank) float32."""
    from trainer.serving import nf4_kernels

    rows, k = x.shape
    total = lora.a.shape[2]
    split = -(-k // SHRINK_BLOCK_K)
    partial = torch.empty(split, rows, total, dtype=torch.float32, device=x.device)
    nf4_kernels.lora_shrink_kernel[(split, rows)](
        x, x.stride(0), lora.a, lora.a.stride(0), lora.slots, partial, rows, k,
        RT=total, RT_PAD=_pow2(total), BLOCK_K=SHRINK_BLOCK_K, num_warps=4,
    )  # fmt: skip
    return partial, split


@functools.cache
def _pow2(value: int) -> int:
    return 1 << (value - 1).bit_length()
