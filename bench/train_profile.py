"""Diagnostic, appends nothing: where one training micro-step of qlora-bot's default path spends its time.

Loads the random Llama of bench/train_throughput.py through trainer/training/model_loading.py (4-bit base,
all-linear LoRA), applies liger's layer kernels as the trainer does, and times forward + backward of one
packed micro-batch (2 rows x 2048 tokens of lognormal-length documents, positions restarting per document) in
several set-ups; then prints the top GPU kernels of one profiled step.

    python bench/train_profile.py [--work /tmp/bench-train] [--setups packed,causal,packed-ckpt]
    python bench/train_profile.py --trainer   # the worker's own trainer (training/sft.py): steps 3-4 profiled
"""

from __future__ import annotations

import argparse
import itertools
import math
import random
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.random_llama import SHAPES, build_random_llama  # noqa: E402


def packed_batch(rows: int, length: int, vocab: int, seed: int = 0):
    """input_ids and restarting position_ids, documents of lognormal lengths (median 350) filling each row."""
    import torch

    rng = random.Random(seed)
    ids, positions = [], []
    for _ in range(rows):
        row_positions: list[int] = []
        while len(row_positions) < length:
            document = min(2000, max(8, round(rng.lognormvariate(math.log(350), 0.6))))
            row_positions += list(range(min(document, length - len(row_positions))))
        positions.append(row_positions)
        ids.append([rng.randrange(4, vocab) for _ in range(length)])
    return torch.tensor(ids, device="cuda"), torch.tensor(positions, device="cuda")


def main() -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-train"))
    parser.add_argument("--setups", default="packed,causal,packed-ckpt")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--trainer", action="store_true", help="profile the worker's SFTTrainer instead")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b", help="tiny: a plumbing check")
    args = parser.parse_args()
    model_dir = build_random_llama(args.work / f"llama-{args.shape}-random", SHAPES[args.shape])
    if args.trainer:
        return profile_trainer(model_dir, args.work, SHAPES[args.shape]["vocab_size"])

    from protocol.job_spec import LoraSpec
    from trainer.training.model_loading import add_lora, load_quantized_model

    model = add_lora(load_quantized_model(str(model_dir), None), LoraSpec())
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model.get_base_model(), fused_linear_cross_entropy=True)
        print("liger: layer kernels and fused linear cross-entropy applied")
    except ImportError:
        print("liger: absent")
    model.train()
    ids, positions = packed_batch(2, 2048, SHAPES["7b"]["vocab_size"])
    for setup in args.setups.split(","):
        checkpointing = setup.endswith("-ckpt")
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_disable()
        inputs = {"input_ids": ids, "labels": ids}
        if setup.startswith("packed"):
            inputs["position_ids"] = positions

        def step(inputs: dict = inputs) -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = model(**inputs, use_cache=False).loss
            loss.backward()

        step()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(args.steps):
            step()
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / args.steps
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(
            f"{setup}: {seconds * 1000:.0f} ms per micro-step, {ids.numel() / seconds:,.0f} tokens/s, "
            f"{peak:.1f} GiB"
        )
        if setup == args.setups.split(",")[0]:
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
                step()
                torch.cuda.synchronize()
            print(
                profile.key_averages().table(
                    sort_by="cuda_time_total", row_limit=30, max_name_column_width=70
                )
            )
    return 0


def profile_trainer(model_dir: Path, work: Path, vocab: int) -> int:
    """The worker's own path up to trainer.train() (trainer.training.worker.prepare: memory plan, packed
    attention, fused kernels as a default job gets them); a profiler over optimizer steps 3-4."""
    import torch
    from transformers import TrainerCallback

    from bench.train_throughput import synthetic_dataset
    from protocol.job_spec import DatasetSpec, JobSpec, TrainingSpec
    from protocol.launch import Launch
    from trainer.training.worker import prepare
    from trainer.worker_io import CancelFlag

    data = synthetic_dataset(work / f"synthetic-{vocab}.jsonl", vocab, rows=2000)
    spec = JobSpec(
        base_model=str(model_dir),
        dataset=DatasetSpec(source=str(data), kind="file"),
        training=TrainingSpec(max_steps=5, checkpoint_steps=10_000),
    )
    launch = Launch(job_dir=str(work / "out-profile"))
    trainer = prepare(spec, launch, lambda event: print(event), CancelFlag()).trainer
    profiler = torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    )
    marks: list[float] = []

    class Window(TrainerCallback):
        def on_step_end(self, _args, state, *_: object, **__: object) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append(time.perf_counter())
            if state.global_step == 2:
                profiler.start()
            elif state.global_step == 4:
                profiler.stop()

    trainer.add_callback(Window())
    trainer.train()
    steps = [f"{(b - a) * 1000:.0f}" for a, b in itertools.pairwise(marks)]
    print("ms per optimizer step after the first:", ", ".join(steps))
    averages = profiler.key_averages()
    if torch.cuda.is_available():
        print(averages.table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=60))
    print(averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    return 0


if __name__ == "__main__":
    sys.exit(main())
