"""Serving benchmark: a random-init Llama-2-7B shape in 4-bit with four r=16 all-linear adapters.

Measures, on one GPU and in one run: adapter cold-load time, switch time between resident adapters,
memory per resident adapter (the serve engine's own Residency and LoRA bank), then through the
real serve worker (`python -m trainer.serving.worker`, spoken to by the bot's ServeClient): time to
first token and tokens/s without and with an adapter, and four asks for four different adapters run one after
another versus sent together (one mixed batch; three rounds, medians). Prints a table, writes
bench/out/serve.json and appends the table to bench/RESULTS.md.

    python bench/serve.py [--work /tmp/bench-serve] [--new-tokens 128]

Needs a CUDA GPU and, beside torch/transformers/peft/accelerate, bitsandbytes (carry it as a wheel on
a machine without network, as bench/README.md says). Nothing is downloaded: the model is random.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.random_llama import LLAMA2_7B, build_random_llama  # noqa: E402

ADAPTERS = 4
ROUNDS = 3  # sequential and mixed runs, alternated; the table reports each one's median
# Words of the benchmark's own word-level vocabulary: one word is one token, none unknown.
PROMPT = " ".join(f"w{i}" for i in range(100, 164))


def build_model_and_adapters(work: Path) -> tuple[Path, list[Path]]:
    """A random bf16 Llama-2-7B shape saved as safetensors, and four random r=16 all-linear adapters."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from protocol.job_folder import ADAPTER_RECORD, AdapterRecord, TrainedSpec, write_file
    from protocol.job_spec import DatasetSpec

    model_dir = work / "llama-2-7b-random"
    adapter_dirs = [work / f"adapter-{i}" for i in range(ADAPTERS)]
    if (model_dir / "config.json").exists() and all(
        (d / "adapter_config.json").exists() for d in adapter_dirs
    ):
        return model_dir, adapter_dirs
    build_random_llama(model_dir, LLAMA2_7B)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16, device_map="cuda")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lora = LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"
    )
    peft_model = get_peft_model(model, lora)  # the default adapter name saves at the folder's top level
    for index, folder in enumerate(adapter_dirs):
        torch.manual_seed(index + 1)
        with torch.no_grad():
            for name, parameter in peft_model.named_parameters():
                if "lora_" in name:
                    parameter.normal_(0.0, 0.02)
        peft_model.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        spec = TrainedSpec(base_model=str(model_dir), dataset=DatasetSpec(source="random"))
        record = AdapterRecord(
            spec, data_format="text", prompt_style="raw", chat_template_source="base model"
        )
        write_file(folder / ADAPTER_RECORD, record)
        config_path = folder / "adapter_config.json"
        adapter_config = json.loads(config_path.read_text())
        adapter_config["base_model_name_or_path"] = str(model_dir)
        config_path.write_text(json.dumps(adapter_config))
    del peft_model, model
    torch.cuda.empty_cache()
    return model_dir, adapter_dirs


def measure_adapter_residency(model_dir: Path, adapter_dirs: list[Path]) -> dict[str, float]:
    """Cold load, switch time and memory per adapter, through the serve engine's own Residency."""
    import torch

    from trainer.serving.models import Residency

    residency = Residency(max_adapters=8, max_adapter_mb=4096)
    base = residency.base(str(model_dir), lambda: None)
    kernels = getattr(base.decoder, "kernels", None) is not None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    loads = []
    for folder in adapter_dirs:
        torch.cuda.synchronize()
        started = time.perf_counter()
        residency.adapter(base, str(folder), lambda: None)
        torch.cuda.synchronize()
        loads.append(time.perf_counter() - started)
    memory = (torch.cuda.memory_allocated() - before) / len(adapter_dirs)
    # A switch is all that changes when the next request names another resident adapter: the LRU lookup
    # (with its folder checks) and the row's slot written where the decode step reads it.
    slots = torch.zeros(1, dtype=torch.long, device="cuda")
    switches = []
    for turn in range(200):
        torch.cuda.synchronize()
        started = time.perf_counter()
        resident = residency.adapter(base, str(adapter_dirs[turn % ADAPTERS]), lambda: None)
        slots.copy_(torch.tensor([resident.slot], device="cuda"))
        torch.cuda.synchronize()
        switches.append(time.perf_counter() - started)
    del base, residency
    torch.cuda.empty_cache()
    return {
        "cold_load_ms": statistics.median(loads[1:]) * 1000,  # the first also sets up the LoRA bank
        "first_load_ms": loads[0] * 1000,
        "switch_ms": statistics.median(switches[ADAPTERS:]) * 1000,
        "adapter_mib": memory / 2**20,
        "kernels": kernels,
    }


async def measure_generation(model_dir: Path, adapter_dirs: list[Path], new_tokens: int) -> dict[str, Any]:
    """Through the real serve worker: TTFT and tokens/s, base vs adapter, sequential vs mixed batch."""
    from bot.config import ServeConfig
    from bot.workers.serve_worker import ServeClient
    from protocol.serve import Failed, Finished, Generate

    client = ServeClient(ServeConfig(max_adapters=8, max_batch=ADAPTERS), Path("/tmp/bench-serve.log"))
    counter = iter(range(1_000_000))

    def request(adapter: Path | None) -> Generate:
        return Generate(
            id=f"r{next(counter)}", base_model=str(model_dir), adapter=str(adapter) if adapter else None,
            prompt=PROMPT, max_new_tokens=new_tokens, temperature=0.0,
        )  # fmt: skip

    async def run(item: Generate) -> Finished:
        result = None
        async for event in client.generate(item):
            if isinstance(event, Failed):
                raise RuntimeError(f"{event.kind}: {event.message}")
            if isinstance(event, Finished):
                result = event
        assert result is not None
        return result

    try:
        for adapter in [None, *adapter_dirs]:  # warm-up: load everything, compile nothing twice
            await run(request(adapter))
        await asyncio.gather(*(run(request(adapter)) for adapter in adapter_dirs))  # and the batch's graph
        base = [await run(request(None)) for _ in range(3)]
        tuned = [await run(request(adapter_dirs[0])) for _ in range(3)]
        sequential, mixed = [], []  # tokens/s of each round: one figure each is too noisy for a ratio
        for _ in range(ROUNDS):
            started = time.perf_counter()
            answers = [await run(request(adapter)) for adapter in adapter_dirs]
            sequential.append(sum(r.tokens for r in answers) / (time.perf_counter() - started))
            started = time.perf_counter()
            answers = await asyncio.gather(*(run(request(adapter)) for adapter in adapter_dirs))
            mixed.append(sum(r.tokens for r in answers) / (time.perf_counter() - started))
    finally:
        await client.close()
    return {
        "ttft_base_ms": statistics.median(r.time_to_first_token_s or 0 for r in base) * 1000,
        "ttft_adapter_ms": statistics.median(r.time_to_first_token_s or 0 for r in tuned) * 1000,
        "tokens_per_s_base": statistics.median(r.tokens_per_s for r in base),
        "tokens_per_s_adapter": statistics.median(r.tokens_per_s for r in tuned),
        "sequential_tokens_per_s": statistics.median(sequential),
        "mixed_batch_tokens_per_s": statistics.median(mixed),
        "speedup_per_round": [m / s for s, m in zip(sequential, mixed, strict=True)],
    }


def report(results: dict[str, Any], environment: dict[str, str]) -> str:
    ratio = results["tokens_per_s_adapter"] / results["tokens_per_s_base"]
    speedup = results["mixed_batch_tokens_per_s"] / results["sequential_tokens_per_s"]
    r = results
    rows = [
        ("adapter cold load", f"{r['cold_load_ms']:.0f} ms (first {r['first_load_ms']:.0f} ms)", "< 300 ms",
         max(r["cold_load_ms"], r["first_load_ms"]) < 300),
        ("switch between resident adapters", f"{r['switch_ms']:.2f} ms", "< 5 ms", r["switch_ms"] < 5),
        ("memory per resident adapter", f"{r['adapter_mib']:.0f} MiB", "", None),
        ("time to first token, base", f"{r['ttft_base_ms']:.0f} ms", "", None),
        ("time to first token, adapter", f"{r['ttft_adapter_ms']:.0f} ms", "", None),
        ("tokens/s, base", f"{r['tokens_per_s_base']:.1f}", "", None),
        ("tokens/s, adapter", f"{r['tokens_per_s_adapter']:.1f} ({ratio:.0%})", ">= 85%", ratio >= 0.85),
        ("4 adapters, sequential", f"{r['sequential_tokens_per_s']:.1f} tokens/s", "", None),
        ("4 adapters, one mixed batch",
         f"{r['mixed_batch_tokens_per_s']:.1f} tokens/s ({speedup:.2f}x; rounds "
         f"{', '.join(f'{x:.2f}x' for x in r['speedup_per_round'])})", ">= 2.5x", speedup >= 2.5),
    ]  # fmt: skip
    lines = [
        f"### Serving, {environment['date']}: {environment['gpu']}",
        "",
        f"torch {environment['torch']}, transformers {environment['transformers']}, "
        f"peft {environment['peft']}, bitsandbytes {environment['bitsandbytes']}, "
        f"triton {environment['triton']} "
        f"(serving kernels {'on' if r['kernels'] else 'off'}); random-init Llama-2-7B "
        f"shape, NF4 double-quant, bf16 compute, {ADAPTERS} r=16 all-linear adapters, greedy, "
        f"{environment['new_tokens']} new tokens.",
        "",
        "| measure | result | target | met |",
        "|---|---|---|---|",
    ]
    for name, value, target, met in rows:
        lines.append(f"| {name} | {value} | {target} | {'' if met is None else ('yes' if met else 'NO')} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-serve"))
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    import bitsandbytes
    import peft
    import torch
    import transformers

    if not torch.cuda.is_available():
        print("bench/serve.py needs a CUDA GPU", file=sys.stderr)
        return 2
    model_dir, adapter_dirs = build_model_and_adapters(args.work)
    results = measure_adapter_residency(model_dir, adapter_dirs)
    results.update(asyncio.run(measure_generation(model_dir, adapter_dirs, args.new_tokens)))
    environment = {
        "date": datetime.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "bitsandbytes": bitsandbytes.__version__,
        "triton": _version("triton"),
        "new_tokens": str(args.new_tokens),
    }
    table = report(results, environment)
    print(table)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "serve.json").write_text(json.dumps({"results": results, "environment": environment}, indent=2))
    with (ROOT / "bench" / "RESULTS.md").open("a") as results_file:
        results_file.write("\n" + table)
    return 0


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "absent"


if __name__ == "__main__":
    sys.exit(main())
