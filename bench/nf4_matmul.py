"""The few-row 4-bit kernels (trainer/serving/nf4_kernels.py) against bitsandbytes, per layer group of a
Llama-2-7B decoder layer: microseconds per call inside a CUDA graph (as the decode step replays them) for a
sweep of tiles, and the kernel with its LoRA beside against bitsandbytes plus torch matmuls. A diagnostic for
bench/serve.py's figures (the serve worker picks its tiles itself at load, kernel_layers.py); writes
bench/out/nf4_matmul.json, appends nothing.

    python bench/nf4_matmul.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GROUPS = {  # name: (member output sizes, input size) of one Llama-2-7B layer
    "qkv": ((4096, 4096, 4096), 4096),
    "o": ((4096,), 4096),
    "gate_up": ((11008, 11008), 4096),
    "down": ((4096,), 11008),
}
RANK = 16
SLOTS = 5
LAYERS = 32


def relative_error(actual, expected) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def random_layers(members: tuple[int, ...], k: int) -> list:
    import bitsandbytes as bnb
    import torch

    layers = []
    for size in members:
        layer = bnb.nn.Linear4bit(
            k, size, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4", compress_statistics=True
        )
        layer.weight = bnb.nn.Params4bit(
            torch.randn(size, k) * 0.02, requires_grad=False, quant_type="nf4", compress_statistics=True
        )
        layers.append(layer.to("cuda"))
    return layers


def torch_lora(layers: list, members: tuple[int, ...], x, a, b, slots) -> None:
    """bitsandbytes' products plus the LoRA as the module path computes it (one adapter or a slot per row)."""
    import torch

    rows, k = x.shape
    start = 0
    for index, layer in enumerate(layers):
        y = layer(x)
        size = members[index]
        a_i, b_i = a[:, :, index * RANK : (index + 1) * RANK], b[:, :, start : start + size]
        if rows == 1:  # the one slot is slot 1 (measure_group); no host read of `slots` inside a capture
            y.addmm_(x @ a_i[1], b_i[1])
        else:
            xa = torch.bmm(x.view(rows, 1, k), a_i.index_select(0, slots))
            y.view(rows, 1, size).baddbmm_(xa, b_i.index_select(0, slots))
        start += size


def expected_with_lora(reference, x, a, b, slots, members):
    expected = reference.clone()
    for row in range(x.shape[0]):
        slot, start = int(slots[row]), 0
        for index, size in enumerate(members):
            shrink = x[row].float() @ a[slot, :, index * RANK : (index + 1) * RANK].float()
            expected[row, start : start + size] += shrink @ b[slot, :, start : start + size].float()
            start += size
    return expected


def measure_group(
    name: str, members: tuple[int, ...], k: int, tiles: list, row_counts: tuple[int, ...], per_token: dict
) -> dict:
    import bitsandbytes.functional as bnb_functional
    import torch

    from trainer.serving import nf4_matmul
    from trainer.serving.kernel_layers import graph_us

    def timed(run) -> float:  # more calls than the worker's load-time timing: steadier figures
        return graph_us(run, calls=20, replays=10)

    layers = random_layers(members, k)
    weight = nf4_matmul.pack_linears(layers)
    dense = torch.cat([bnb_functional.dequantize_4bit(x.weight.data, x.weight.quant_state) for x in layers])
    entry: dict = {"n": weight.n, "k": k, "rows": {}}
    for rows in row_counts:
        x = torch.randn(rows, k, dtype=torch.bfloat16, device="cuda")
        reference = x.float() @ dense.float().T
        bnb_us = timed(lambda: [layer(x) for layer in layers])  # noqa: B023 (timed inside this iteration)
        sweep = []
        for config in tiles:
            if not weight.fits(config):
                continue
            try:
                error = relative_error(nf4_matmul.matmul(x, weight, config=config), reference)
                us = timed(lambda c=config: nf4_matmul.matmul(x, weight, config=c))  # noqa: B023
            except Exception as exc:  # a tile that does not fit (shared memory, registers) is skipped
                print(f"  {name} rows={rows} {config}: {type(exc).__name__} {str(exc)[:80]}")
                continue
            sweep.append((us, config, error))
        sweep.sort(key=lambda item: item[0])
        best_us, best, best_error = sweep[0]
        gbps = (weight.codes.numel() + weight.scales.numel() * 2) / best_us / 1000
        print(
            f"{name:8s} rows={rows} N={weight.n:5d} K={k:5d}  bitsandbytes {bnb_us:6.1f} us  kernel best "
            f"{best_us:6.1f} us ({gbps:4.0f} GB/s, max rel err {best_error:.1e}) {best}"
        )
        for us, config, _ in sweep[1:4]:
            print(f"        {us:6.1f} us {config}")
        a = torch.randn(SLOTS, k, RANK * len(members), dtype=torch.bfloat16, device="cuda") * 0.02
        b = torch.randn(SLOTS, RANK, weight.n, dtype=torch.bfloat16, device="cuda") * 0.02
        slots = torch.arange(1, rows + 1, device="cuda") % SLOTS  # a different adapter per row
        lora = nf4_matmul.GroupLora(a, b, RANK, slots)

        def with_lora():
            product = partial(nf4_matmul.matmul, x, weight, best)  # noqa: B023
            return nf4_matmul.with_lora_beside(product, x, lora, members)  # noqa: B023

        lora_us = timed(with_lora)
        lora_error = relative_error(with_lora(), expected_with_lora(reference, x, a, b, slots, members))
        torch_us = timed(lambda: torch_lora(layers, members, x, a, b, slots))  # noqa: B023
        print(
            f"        + LoRA: kernel {lora_us:6.1f} us (max rel err {lora_error:.1e}), "
            f"bnb + torch {torch_us:6.1f} us"
        )
        per_token["bnb + torch"][rows] = per_token["bnb + torch"].get(rows, 0.0) + LAYERS * torch_us
        per_token["kernel"][rows] = per_token["kernel"].get(rows, 0.0) + LAYERS * lora_us
        entry["rows"][rows] = {
            "bnb_us": bnb_us, "best_us": best_us, "best": best.__dict__, "error": best_error,
            "lora_us": lora_us, "lora_error": lora_error, "bnb_torch_lora_us": torch_us,
            "sweep": [(us, config.__dict__) for us, config, _ in sweep],
        }  # fmt: skip
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only the tiles the serve worker considers")
    args = parser.parse_args()
    import bitsandbytes
    import torch
    import triton

    from trainer.serving import nf4_matmul
    from trainer.serving.kernel_layers import CANDIDATES

    torch.manual_seed(0)
    gpu = torch.cuda.get_device_name()
    print(
        f"{gpu}, torch {torch.__version__}, triton {triton.__version__}, "
        f"bitsandbytes {bitsandbytes.__version__}"
    )
    tiles = list(CANDIDATES)
    if not args.quick:  # a sweep: tile widths, warps, K slices
        shapes = [(8, 2), (16, 2), (16, 4), (32, 4), (32, 8), (64, 4), (64, 8), (128, 8)]
        tiles += [
            nf4_matmul.KernelConfig(block_n, warps, split)
            for block_n, warps in shapes
            for split in (1, 2, 4, 8)
        ]
        tiles = list(dict.fromkeys(tiles))
    row_counts = (1, 2, 4) if args.quick else (1, 4)  # the sweep compiles every tile per row count
    per_token: dict = {"bnb + torch": {}, "kernel": {}}
    results: dict = {"device": gpu, "date": time.strftime("%Y-%m-%d"), "groups": {}}
    for name, (members, k) in GROUPS.items():
        results["groups"][name] = measure_group(name, members, k, tiles, row_counts, per_token)
        torch.cuda.empty_cache()
    summary = {
        path: {rows: round(us / 1000, 2) for rows, us in by_rows.items()}
        for path, by_rows in per_token.items()
    }
    print(
        f"linear layers with LoRA per token ({LAYERS} layers), ms by rows, each group on one path:", summary
    )
    results["per_token_ms"] = summary
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "nf4_matmul.json").write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
