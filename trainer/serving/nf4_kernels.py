"""Triton kernels for decoding a few rows on a 4-bit base: each weight byte read once for every row.

bitsandbytes has a fast kernel for exactly one row (`gemv_4bit`); for more rows it dequantizes the whole
weight to bf16 and calls cuBLAS, so a batch of four decodes at half the speed of one row per row.
`nf4_matmul_kernel` keeps one accumulator per row (1 to 4) and shares the dequantized weights between them.
The rows' LoRA is two small kernels (shrink, then expand) that the decode step runs beside the base product
on a second stream (kernel_layers.py): fusing the expand into the base kernel was slower (bench/RESULTS.md).

The weights stay in bitsandbytes' own layout: row-major (N, K) 4-bit codes, two per byte, the even column
in the high nibble, one scale per `group` consecutive values. Only the scales are expanded once to a flat
float tensor (bitsandbytes double-quantizes them), about 6% of the packed weights in float16.

    nf4_matmul:   out[m, n] = sum_k x[m, k] W[n, k]
    lora_shrink:  partial[s, m, :] = x[m, s-th K slice] @ A[slot[m]][s-th K slice]       (no atomics)
    lora_expand:  out[m, n] = sum_r (sum_s partial[s, m, r0 + r]) B[slot[m], r, n]
"""

from __future__ import annotations

import triton
import triton.language as tl

LANES = tl.constexpr(32)  # a warp's lanes, each reading one 32-bit word (8 codes) of an output's row per step
STEP = tl.constexpr(LANES * 8)  # the K values one step of nf4_matmul_kernel covers


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


@triton.jit(do_not_specialize=["word_step"])
def nf4_matmul_kernel(
    x_ptr,
    stride_xm,
    w_ptr,  # (N, K // 8) int32: bitsandbytes' bytes, four per word
    scale_ptr,  # (N, K // GROUP) float16
    pair_ptr,  # (256,) int32: for each byte, the bfloat16 bits of its two codes' values (high, low)
    out_ptr,
    stride_om,
    partial_ptr,  # (SPLIT, ROWS, N) float32: each K slice's sums (unused when SPLIT is 1)
    count_ptr,  # (tiles,) int32, zero between calls: how many K slices of each tile are done
    N,
    K,
    word_step,  # 1, passed so the compiler cannot see it (below)
    ROWS: tl.constexpr,  # 1 to 4
    GROUP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    SPLIT: tl.constexpr,
):
    # One program per BLOCK_N outputs and K slice; K is a multiple of STEP (no masks). The tile is
    # (LANES, BLOCK_N): a warp's lanes run along K, each holding one word of each of its outputs, warps split
    # the outputs. Every value a lane needs stays in its own registers: the code-table lookups (one load per
    # byte) are already in this layout, and the word loads are kept in it by hiding their unit stride from the
    # compiler (a vectorized load would take another layout and convert through shared memory, with a
    # barrier, every step). Accumulators are per lane, summed across the warp once at the end; rows are
    # separate accumulators sharing the dequantized weights. Splitting K gives narrow layers (4096 outputs)
    # enough programs to keep loads in flight.
    tile = tl.program_id(0)
    split = tl.program_id(1)
    per_split = tl.cdiv(K // STEP, SPLIT) * STEP
    k_start = split * per_split
    k_end = tl.minimum(k_start + per_split, K)
    offs_n = tile * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_w = tl.arange(0, LANES)
    words_at = w_ptr + offs_n[None, :] * (K // 8) + offs_w[:, None] * word_step
    scales_at = scale_ptr + offs_n[None, :] * (K // GROUP) + (offs_w[:, None] * 8) // GROUP
    acc0 = tl.zeros((LANES, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((LANES, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((LANES, BLOCK_N), dtype=tl.float32)
    acc3 = tl.zeros((LANES, BLOCK_N), dtype=tl.float32)
    for k0 in range(k_start, k_end, STEP):
        words = tl.load(words_at + (k0 // 8) * word_step)
        scale = tl.load(scales_at + k0 // GROUP).to(tl.float32)
        byte0 = _byte_values(words, 0, pair_ptr, scale)
        byte1 = _byte_values(words, 8, pair_ptr, scale)
        byte2 = _byte_values(words, 16, pair_ptr, scale)
        byte3 = _byte_values(words, 24, pair_ptr, scale)
        k = k0 + offs_w * 8  # each lane's first column
        acc0 = _add_row(acc0, x_ptr, k, byte0, byte1, byte2, byte3)
        if ROWS > 1:
            acc1 = _add_row(acc1, x_ptr + stride_xm, k, byte0, byte1, byte2, byte3)
        if ROWS > 2:
            acc2 = _add_row(acc2, x_ptr + 2 * stride_xm, k, byte0, byte1, byte2, byte3)
        if ROWS > 3:
            acc3 = _add_row(acc3, x_ptr + 3 * stride_xm, k, byte0, byte1, byte2, byte3)
    _write_rows(
        tl.sum(acc0, axis=0), tl.sum(acc1, axis=0), tl.sum(acc2, axis=0), tl.sum(acc3, axis=0),
        out_ptr, stride_om, partial_ptr, count_ptr + tile, split, offs_n, N, ROWS, SPLIT,
    )  # fmt: skip


@triton.jit
def _byte_values(words, shift, pair_ptr, scale):
    """The weights of the byte at `shift` of each word: columns 2b (high nibble) and 2b + 1 (low), float32."""
    pair = tl.load(pair_ptr + ((words >> shift) & 0xFF)).to(tl.uint32, bitcast=True)
    high = (pair & 0xFFFF0000).to(tl.float32, bitcast=True) * scale
    low = (pair << 16).to(tl.float32, bitcast=True) * scale
    return high, low


@triton.jit
def _add_row(acc, x_row, k, byte0, byte1, byte2, byte3):
    """acc += one row's products with each lane's 8 weights (columns k to k + 7) of every output."""
    acc = _add_byte(acc, x_row, k, byte0)
    acc = _add_byte(acc, x_row, k + 2, byte1)
    acc = _add_byte(acc, x_row, k + 4, byte2)
    acc = _add_byte(acc, x_row, k + 6, byte3)
    return acc


@triton.jit
def _add_byte(acc, x_row, k, values):
    high, low = values
    x_even = tl.load(x_row + k).to(tl.float32)
    x_odd = tl.load(x_row + k + 1).to(tl.float32)
    return acc + high * x_even[:, None] + low * x_odd[:, None]


@triton.jit
def _write_rows(
    total0, total1, total2, total3, out_ptr, stride_om, partial_ptr, count_ptr, split, offs_n, N,
    ROWS: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    """Store each row's sums for the tile's outputs. Split over K, each slice stores its sums and the last
    slice of the tile to finish adds them up in slice order (the same result whichever finishes last) and
    re-arms the tile's counter for the next call: no second kernel, no atomics on the sums."""
    if SPLIT == 1:
        _store(total0, 0, out_ptr, stride_om, offs_n)
        if ROWS > 1:
            _store(total1, 1, out_ptr, stride_om, offs_n)
        if ROWS > 2:
            _store(total2, 2, out_ptr, stride_om, offs_n)
        if ROWS > 3:
            _store(total3, 3, out_ptr, stride_om, offs_n)
    else:
        mine = partial_ptr + split * ROWS * N + offs_n
        tl.store(mine, total0)
        if ROWS > 1:
            tl.store(mine + N, total1)
        if ROWS > 2:
            tl.store(mine + 2 * N, total2)
        if ROWS > 3:
            tl.store(mine + 3 * N, total3)
        tl.debug_barrier()  # every thread's stores precede the release below
        if tl.atomic_add(count_ptr, 1, sem="acq_rel") == SPLIT - 1:
            _sum_slices(partial_ptr, 0, out_ptr, stride_om, offs_n, N, ROWS, SPLIT)
            if ROWS > 1:
                _sum_slices(partial_ptr, 1, out_ptr, stride_om, offs_n, N, ROWS, SPLIT)
            if ROWS > 2:
                _sum_slices(partial_ptr, 2, out_ptr, stride_om, offs_n, N, ROWS, SPLIT)
            if ROWS > 3:
                _sum_slices(partial_ptr, 3, out_ptr, stride_om, offs_n, N, ROWS, SPLIT)
            tl.atomic_xchg(count_ptr, 0)


@triton.jit
def _store(total, row, out_ptr, stride_om, offs_n):
    tl.store(out_ptr + row * stride_om + offs_n, total.to(out_ptr.dtype.element_ty))


@triton.jit
def _sum_slices(partial_ptr, row, out_ptr, stride_om, offs_n, N, ROWS: tl.constexpr, SPLIT: tl.constexpr):
    """Row `row`'s outputs: its K slices' sums added in slice order. Read through L2 (.cg): other SMs wrote
    them, and this SM's L1 is not kept coherent with their stores."""
    total = tl.zeros(offs_n.shape, dtype=tl.float32)
    for split in tl.static_range(SPLIT):
        total += tl.load(partial_ptr + (split * ROWS + row) * N + offs_n, cache_modifier=".cg")
    _store(total, row, out_ptr, stride_om, offs_n)


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
    """out[row, tile] = the row's LoRA product: (sum of the shrink's partials) @ B[slot]."""
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
    tl.store(out, tl.sum(a[:, None] * b, axis=0).to(out_ptr.dtype.element_ty))
