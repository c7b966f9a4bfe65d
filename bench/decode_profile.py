"""Where a decode step's time goes: ms per step by batch rows and LoRA (graph replay), and the top kernels
of ten replayed steps (torch.profiler). A diagnostic for bench/serve.py's figures; it appends nothing.

    python bench/decode_profile.py [--work /tmp/bench-serve]   # reuses or builds serve.py's model
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.serve import PROMPT, build_model_and_adapters  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-serve"))
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    import logging

    import torch
    from torch.profiler import ProfilerActivity, profile

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from trainer.serving.models import Residency

    model_dir, adapter_dirs = build_model_and_adapters(args.work)
    residency = Residency(max_adapters=8, max_adapter_mb=4096)
    base = residency.base(str(model_dir), lambda: None)
    slots = [residency.adapter(base, str(folder), lambda: None).slot for folder in adapter_dirs]
    prompt = base.tokenizer(PROMPT).input_ids
    print("| rows | adapters | prefill ms/row | step ms | tokens/s |\n|---|---|---|---|---|")
    with torch.inference_mode():
        for rows, chosen in [
            (1, [None]),
            (1, slots[:1]),
            (4, [None] * 4),
            (4, slots[:1] * 4),
            (4, slots[:4]),
        ]:
            base.decoder.start([prompt] * rows, chosen, len(prompt) + args.steps + 8)  # warm
            torch.cuda.synchronize()
            started = time.perf_counter()
            session = base.decoder.start([prompt] * rows, chosen, len(prompt) + args.steps + 8)
            torch.cuda.synchronize()
            prefill = (time.perf_counter() - started) / rows
            tokens = session.logits.argmax(-1)
            session.step(tokens, [True] * rows)  # captures the graph once
            torch.cuda.synchronize()
            started = time.perf_counter()
            for _ in range(args.steps):
                tokens = session.step(tokens, [True] * rows).argmax(-1)
            tokens.tolist()
            step = (time.perf_counter() - started) / args.steps
            kind = "base" if chosen[0] is None else f"{len(set(chosen))} LoRA"
            print(f"| {rows} | {kind} | {prefill * 1000:.1f} | {step * 1000:.2f} | {rows / step:.0f} |")
        for rows, chosen in [(1, [None]), (1, slots[:1]), (4, slots[:4])]:
            session = base.decoder.start([prompt] * rows, chosen, len(prompt) + 40)
            tokens = session.logits.argmax(-1)
            for _ in range(3):  # captured and warm
                tokens = session.step(tokens, [True] * rows).argmax(-1)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CUDA]) as trace:
                for _ in range(10):
                    tokens = session.step(tokens, [True] * rows).argmax(-1)
                torch.cuda.synchronize()
            kind = "base" if chosen[0] is None else f"{len(set(chosen))} LoRA"
            print(f"\nTen replayed steps, {rows} rows, {kind}: top kernels by GPU time")
            print(
                trace.key_averages().table(sort_by="cuda_time_total", row_limit=16, max_name_column_width=70)
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
