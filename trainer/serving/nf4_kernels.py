"""Triton kernels for decoding a few rows on a 4-bit base: each weight byte read once for every row.

bitsandbytes has a fast kernel for exactly one row (`gemv_4bit`); for more rows it dequantizes the whole
weight to bf16 and calls cuBLAS, so a batch of four decodes at half the speed of one row per row.
`nf4_matmul_kernel` keeps one accumulator per row (1 to 4) and shares the dequantized tile between them.
The rows' LoRA is two small kernels (shrink, then expand) that the decode step runs beside the base product
on a second stream (kernel_layers.py): fusing the expand into the base kernel was slower (bench/RESULTS.md).

The weights stay in bitsandbytes' own layout: row-major (N, K) 4-bit codes, two per byte, the even column
in the high nibble, one scale per `group` consecutive values. Only the scales are expanded once to a flat
float tensor (bitsandbytes double-quantizes them), about 6% of the packed weights in float16.

    nf4_matmul:   out[m, n] = sum_k x[m, k] W[n, k]
    lora_shrink:  partial[s, m, :] = x[m, s-th K slice] @ A[slot[m]][s-th K slice]       (no atomics)
    lora_expand:  out[m, n] += sum_r (sum_s partial[s, m, r0 + r]) B[slot[m], r, n]
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def lora_shrink_kernel(
    x_ptr,
    stride_xm,
    a_ptr,  # (slots, K, RT) every member's A^T side by side
    stride_as,
    slot_ptr,  # (M,) int64
    partial_ptr,  # (SPLIT, M, RT) float32
    M,
    K,
    RT: tl.constexpr,
    RT_PAD: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    split = tl.program_id(0)
    row = tl.program_id(1)
    offs_k = split * BLOCK_K + tl.arange(0, BLOCK_K)
    offs_r = tl.arange(0, RT_PAD)
    k_mask = offs_k < K
    slot = tl.load(slot_ptr + row)
    x = tl.load(x_ptr + row * stride_xm + offs_k, mask=k_mask, other=0.0).to(tl.float32)
    a = tl.load(
        a_ptr + slot * stride_as + offs_k[:, None] * RT + offs_r[None, :],
        mask=k_mask[:, None] & (offs_r[None, :] < RT),
        other=0.0,
    ).to(tl.float32)
    part = tl.sum(x[:, None] * a, axis=0)
    tl.store(partial_ptr + (split * M + row) * RT + offs_r, part, mask=offs_r < RT)


@triton.jit
def _accumulate(acc, x_row, k0, offs_h, high, low, WIDE: tl.constexpr):
    """Add one row's share of a K block, W[n, k] * x[k]: per column (WIDE) or summed over the block."""
    x_even = tl.load(x_row + k0 + 2 * offs_h).to(tl.float32)
    x_odd = tl.load(x_row + k0 + 2 * offs_h + 1).to(tl.float32)
    if WIDE:  # one return per function: Triton refuses a return inside an if
        acc = acc + high * x_even[None, :] + low * x_odd[None, :]
    else:
        acc = acc + tl.sum(high * x_even[None, :] + low * x_odd[None, :], axis=1)
    return acc


@triton.jit
def _finish(acc, row, out_ptr, stride_om, offs_n, WIDE: tl.constexpr):
    """Sum a row's accumulator (per column when WIDE) and store it."""
    if WIDE:  # noqa: SIM108 (a constant condition Triton resolves at compile time; not an expression)
        total = tl.sum(acc, axis=1)
    else:
        total = acc
    tl.store(out_ptr + row * stride_om + offs_n, total.to(out_ptr.dtype.element_ty))


@triton.jit
def _dequantize(w_rows, s_rows, pair_ptr, k0, offs_h, offs_s, BLOCK_N: tl.constexpr, GROUP: tl.constexpr):
    """The tile's weights at columns k0 + 2h (high nibbles) and k0 + 2h + 1 (low), float32 (BLOCK_N, HALF)."""
    packed = tl.load(w_rows + (k0 // 2 + offs_h)[None, :])
    pair = tl.load(pair_ptr + packed.to(tl.int32)).to(tl.uint32, bitcast=True)
    scale = tl.load(s_rows + (k0 // GROUP + offs_s)[None, :]).to(tl.float32)
    half: tl.constexpr = offs_h.shape[0]
    scale = tl.reshape(
        tl.broadcast_to(scale[:, :, None], (BLOCK_N, offs_s.shape[0], GROUP // 2)), (BLOCK_N, half)
    )
    high = (pair & 0xFFFF0000).to(tl.float32, bitcast=True) * scale
    low = (pair << 16).to(tl.float32, bitcast=True) * scale
    return high, low


@triton.jit
def nf4_matmul_kernel(
    x_ptr,
    stride_xm,
    w_ptr,  # (N, K // 2) uint8
    scale_ptr,  # (N, K // GROUP) float16
    pair_ptr,  # (256,) int32: for each byte, the bfloat16 bits of its two codes' values (high, low)
    out_ptr,
    stride_om,
    K,
    ROWS: tl.constexpr,  # 1 to 4
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WIDE: tl.constexpr,
):
    # One program per BLOCK_N outputs, the whole K loop; K is a multiple of BLOCK_K (no masks). Rows are
    # separate accumulators (ROWS is a constant): the dequantized tile is shared, the sums are not mixed.
    HALF: tl.constexpr = BLOCK_K // 2
    SCALES: tl.constexpr = BLOCK_K // GROUP
    tile = tl.program_id(0)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_h = tl.arange(0, HALF)
    offs_s = tl.arange(0, SCALES)
    w_rows = w_ptr + offs_n[:, None] * (K // 2)
    s_rows = scale_ptr + offs_n[:, None] * (K // GROUP)
    if WIDE:  # a partial sum per (output, column): no cross-thread reduction inside the loop
        acc0 = tl.zeros((BLOCK_N, HALF), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_N, HALF), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_N, HALF), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_N, HALF), dtype=tl.float32)
    else:
        acc0 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc1 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_N,), dtype=tl.float32)
        acc3 = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        high, low = _dequantize(w_rows, s_rows, pair_ptr, k0, offs_h, offs_s, BLOCK_N, GROUP)
        acc0 = _accumulate(acc0, x_ptr, k0, offs_h, high, low, WIDE)
        if ROWS > 1:
            acc1 = _accumulate(acc1, x_ptr + stride_xm, k0, offs_h, high, low, WIDE)
        if ROWS > 2:
            acc2 = _accumulate(acc2, x_ptr + 2 * stride_xm, k0, offs_h, high, low, WIDE)
        if ROWS > 3:
            acc3 = _accumulate(acc3, x_ptr + 3 * stride_xm, k0, offs_h, high, low, WIDE)
    _finish(acc0, 0, out_ptr, stride_om, offs_n, WIDE)
    if ROWS > 1:
        _finish(acc1, 1, out_ptr, stride_om, offs_n, WIDE)
    if ROWS > 2:
        _finish(acc2, 2, out_ptr, stride_om, offs_n, WIDE)
    if ROWS > 3:
        _finish(acc3, 3, out_ptr, stride_om, offs_n, WIDE)


@triton.jit
def lora_expand_kernel(
    out_ptr,
    stride_om,
    partial_ptr,
    b_ptr,
    stride_bs,
    slot_ptr,
    rank_offset_ptr,
    M,
    N,
    SPLIT,
    RT,
    R: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    """out[row, tile] += the row's LoRA product, in place: (sum of the shrink's partials) @ B[slot]."""
    tile = tl.program_id(0)
    row = tl.program_id(1)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_r = tl.arange(0, R)
    first = tl.load(rank_offset_ptr + tile)  # where this tile's layer starts in the shrink's columns
    a = tl.zeros((R,), dtype=tl.float32)
    for split in range(0, SPLIT):
        a += tl.load(partial_ptr + (split * M + row) * RT + first + offs_r)
    slot = tl.load(slot_ptr + row)
    b = tl.load(b_ptr + slot * stride_bs + offs_r[:, None] * N + offs_n[None, :]).to(tl.float32)
    out = out_ptr + row * stride_om + offs_n
    acc = tl.load(out).to(tl.float32) + tl.sum(a[:, None] * b, axis=0)
    tl.store(out, acc.to(out_ptr.dtype.element_ty))
