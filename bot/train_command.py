"""`qlora-bot train`: build the job spec from flags and config, run the worker, show its progress."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import re
import shlex
import signal
import time
from pathlib import Path

from rich.console import Console

from bot.config import Config
from bot.terminal_progress import TerminalProgress, format_duration
from bot.worker_process import WorkerProcess, worker_environment
from trainer.protocol import LOG_FILE_NAME, DatasetSpec, Done, Error, JobSpec, spec_problems

SPEC_FILE_NAME = "spec.json"
EXIT_CODES = {"user_error": 2, "cancelled": 130}


def build_spec(args: argparse.Namespace, config: Config) -> JobSpec:
    defaults = config.defaults
    lora = _override(
        defaults.lora,
        r=args.r,
        alpha=args.alpha,
        dropout=args.dropout,
        target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip())
        if args.target_modules
        else None,
    )
    training = _override(
        defaults.training,
        epochs=args.epochs,
        max_steps=args.max_steps,
        learning_rate=args.lr,
        warmup=args.warmup,
        scheduler=args.scheduler,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        max_length=args.max_length,
        eval_fraction=args.eval_fraction,
        checkpoint_steps=args.checkpoint_steps,
        seed=args.seed,
        packing=False if args.no_packing else None,
        gradient_checkpointing=False if args.no_gradient_checkpointing else None,
    )
    name = args.name or _name_from(args.dataset)
    output = args.output or _default_output(args, config, name)
    return JobSpec(
        base_model=args.base_model or defaults.base_model,
        dataset=DatasetSpec(
            source=_local_or_remote(args.dataset),
            format=args.format,
            config=args.dataset_config,
            split=args.split,
        ),
        output_dir=str(output.expanduser().resolve()),
        lora=lora,
        training=training,
        limits=defaults.limits,
        resume_from=str(args.resume.expanduser().resolve()) if args.resume else None,
        name=name,
    )


def _override(instance, **changes):
    return dataclasses.replace(
        instance, **{key: value for key, value in changes.items() if value is not None}
    )


def _local_or_remote(source: str) -> str:
    """Local files become absolute paths: the worker does not share our working directory."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def _name_from(dataset: str) -> str:
    stem = Path(dataset.rstrip("/").split("?")[0]).stem or "adapter"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "adapter"


def _default_output(args: argparse.Namespace, config: Config, name: str) -> Path:
    if args.resume:
        # A checkpoint lives in JOB/checkpoints/checkpoint-N: resume in the same job folder.
        return args.resume.expanduser().resolve().parent.parent
    return config.jobs_dir() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def run_train(args: argparse.Namespace, config: Config, argv: list[str]) -> int:
    console = Console(stderr=True, soft_wrap=True)  # long paths and hints stay on one line
    spec = build_spec(args, config)
    problems = spec_problems(spec)
    if args.resume and not (args.resume / "trainer_state.json").exists():
        problems.append(f"--resume: {args.resume} is not a checkpoint folder (no trainer_state.json)")
    if problems:
        for problem in problems:
            console.print(f"[red]error:[/] {problem}", highlight=False)
        return 2
    job_dir = Path(spec.output_dir)
    job_dir.mkdir(parents=True, exist_ok=True)
    spec_path = job_dir / SPEC_FILE_NAME
    spec_path.write_text(spec.to_json(), encoding="utf-8")
    console.print(f"job folder {job_dir}", highlight=False)
    final = asyncio.run(_run_worker(spec, spec_path, config, console))
    return _report(final, spec, argv, console)


async def _run_worker(spec: JobSpec, spec_path: Path, config: Config, console: Console) -> Done | Error:
    env = worker_environment(spec, os.environ)
    worker = await WorkerProcess.start(
        spec_path, Path(spec.output_dir) / LOG_FILE_NAME, env, python=config.worker.python
    )
    display = TerminalProgress(console)
    interrupts = 0

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            console.print("\ncancelling: the worker saves a checkpoint first (Ctrl-C again to kill it)")
            worker.terminate()
            asyncio.get_running_loop().call_later(config.worker.cancel_grace_s, worker.kill)
        else:
            worker.kill()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    try:
        async for event in worker.events():
            display.handle(event)
            if isinstance(event, (Done, Error)):
                return event
    finally:
        display.close()
        loop.remove_signal_handler(signal.SIGINT)
    raise AssertionError("the worker's event stream ended without a result")


def _report(final: Done | Error, spec: JobSpec, argv: list[str], console: Console) -> int:
    if isinstance(final, Done):
        metrics = final.metrics
        loss = metrics.get("final_loss")
        summary = [f"{metrics.get('steps')} steps", f"{metrics.get('tokens', 0):,} tokens"]
        if loss is not None:
            summary.append(f"final loss {loss:.4f}")
        if metrics.get("eval_loss") is not None:
            summary.append(f"eval loss {metrics['eval_loss']:.4f}")
        summary.append(f"in {format_duration(metrics.get('total_runtime_s'))}")
        console.print(f"[green]done:[/] {', '.join(summary)}", highlight=False)
        print(f"adapter: {final.adapter_dir}")  # stdout: the one line a script wants
        return 0
    console.print(f"[red]{final.kind}:[/] {final.message}", highlight=False)
    if final.hint:
        console.print(f"hint: {final.hint}", highlight=False)
    if final.kind != "user_error":
        console.print(f"log: {Path(spec.output_dir) / LOG_FILE_NAME}", highlight=False)
    if final.checkpoint and final.kind != "user_error":
        console.print("resume with:", highlight=False)
        print(shlex.join(["qlora-bot", *_without_resume(argv), "--resume", final.checkpoint]))
    return EXIT_CODES.get(final.kind, 1)


def _without_resume(argv: list[str]) -> list[str]:
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--resume":
            skip = True
        elif not arg.startswith("--resume="):
            kept.append(arg)
    return kept
