"""`qlora-bot train`: build the job spec from flags and config, run the worker, show its progress."""

from __future__ import annotations

import argparse
import asyncio
import shlex
import signal
from pathlib import Path

from rich.console import Console

from bot.config import Config
from bot.errors import UserFacingError
from bot.job_specs import clean_name, make_spec
from bot.jobs.executor import LocalExecutor
from bot.jobs.local import configured_slots, open_service, terminal_requester
from bot.jobs.service import JobService, Requester
from bot.jobs.service_lock import RunnerLock
from bot.terminal_progress import TerminalProgress, format_duration
from storage.models import Job
from trainer.protocol import (
    LOG_FILE_NAME,
    DatasetSpec,
    Done,
    Event,
    JobSpec,
    newest_checkpoint,
    spec_problems,
)

EXIT_CODES = {"user_error": 2, "cancelled": 130}


def build_spec(args: argparse.Namespace, config: Config) -> JobSpec:
    modules = [m.strip() for m in (args.target_modules or "").split(",") if m.strip()]
    return make_spec(
        config.defaults,
        base_model=args.base_model,
        dataset=DatasetSpec(
            source=_local_or_remote(args.dataset),
            format=args.format,
            config=args.dataset_config,
            split=args.split,
        ),
        name=clean_name(args.name) if args.name else None,
        lora={
            "r": args.r,
            "alpha": args.alpha,
            "dropout": args.dropout,
            "target_modules": tuple(modules) or None,
        },
        training={
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "learning_rate": args.lr,
            "warmup": args.warmup,
            "scheduler": args.scheduler,
            "batch_size": args.batch_size,
            "grad_accum": args.grad_accum,
            "max_length": args.max_length,
            "eval_fraction": args.eval_fraction,
            "checkpoint_steps": args.checkpoint_steps,
            "seed": args.seed,
            "packing": False if args.no_packing else None,
            "gradient_checkpointing": _checkpointing_choice(args),
            "memory_limit_gib": args.memory_limit_gib,
        },
        resume_from=str(args.resume.expanduser().resolve()) if args.resume else None,
    )


def _checkpointing_choice(args: argparse.Namespace) -> bool | str | None:
    """None leaves the configured default; --no-gradient-checkpointing predates --gradient-checkpointing."""
    if args.no_gradient_checkpointing:
        return False
    return {"on": True, "off": False, "auto": "auto", None: None}[args.gradient_checkpointing]


def _local_or_remote(source: str) -> str:
    """Local files become absolute paths: the worker does not share our working directory."""
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def _job_dir(args: argparse.Namespace) -> Path | None:
    """--output, or the job folder of the checkpoint being resumed; None lets the service choose."""
    if args.output:
        return args.output.expanduser().resolve()
    if args.resume:
        # A checkpoint lives in JOB/checkpoints/checkpoint-N: resume in the same job folder.
        return args.resume.expanduser().resolve().parent.parent
    return None


def run_train(args: argparse.Namespace, config: Config, argv: list[str]) -> int:
    console = Console(stderr=True, soft_wrap=True)  # long paths and hints stay on one line
    spec = build_spec(args, config)
    problems = spec_problems(spec.replace(output_dir="(job folder)"))
    if args.resume and not (args.resume / "trainer_state.json").exists():
        problems.append(f"--resume: {args.resume} is not a checkpoint folder (no trainer_state.json)")
    if problems:
        for problem in problems:
            console.print(f"[red]error:[/] {problem}", highlight=False)
        return 2
    return asyncio.run(_train(spec, _job_dir(args), config, console, argv))


async def _train(
    spec: JobSpec, job_dir: Path | None, config: Config, console: Console, argv: list[str]
) -> int:
    requester = terminal_requester()
    lock = RunnerLock(config.data_dir())
    try:
        async with open_service(config) as service:
            try:
                job = await service.submit(spec, requester, job_dir=job_dir)
            except UserFacingError as error:
                console.print(f"[red]error:[/] {error.message}", highlight=False)
                if error.hint:
                    console.print(f"hint: {error.hint}", highlight=False)
                return 2
            console.print(f"job {job.id}: folder {job.spec.output_dir}", highlight=False)
            takeover = asyncio.create_task(_run_queue_when_free(service, lock, job.id, config, console))
            try:
                await _follow(service, job, requester, console)
            finally:
                takeover.cancel()
            ended = await service.get(job.id)
            done = await service.store.last_event(job.id, "done")
    finally:
        lock.release()
    return _report(ended, done.event if done else None, argv, console)


async def _follow(service: JobService, job: Job, requester: Requester, console: Console) -> None:
    """Render the job until it ends; Ctrl-C cancels it (at a checkpoint), a second Ctrl-C kills it."""
    loop = asyncio.get_running_loop()
    interrupts = 0
    pending: set[asyncio.Task] = set()

    def on_interrupt() -> None:
        nonlocal interrupts
        interrupts += 1
        if interrupts == 1:
            console.print("\ncancelling: the worker saves a checkpoint first (Ctrl-C again to kill it)")
            task = loop.create_task(service.cancel(job.id, requester))
            pending.add(task)
            task.add_done_callback(pending.discard)
        elif service.runner is not None:
            service.runner.kill(job.id)

    loop.add_signal_handler(signal.SIGINT, on_interrupt)
    display = TerminalProgress(console)
    try:
        async for update in service.subscribe(job.id):
            if update.event is not None:
                display.handle(update.event)
            else:
                display.state(update.job)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        display.close()


async def _run_queue_when_free(
    service: JobService, lock: RunnerLock, job_id: int, config: Config, console: Console
) -> None:
    """Run our job here, unless another qlora-bot process runs the queue: then it runs there."""
    if not lock.try_acquire():
        holder = lock.holder_pid()
        console.print(f"qlora-bot (pid {holder}) runs the queue; job {job_id} runs there", highlight=False)
        while not lock.try_acquire():  # that process may stop before our job's turn
            await asyncio.sleep(2.0)
    executor = LocalExecutor(python=config.worker.python)
    await service.start_runner(executor, configured_slots(config), only_job_ids={job_id})


def _report(job: Job, done: Event | None, argv: list[str], console: Console) -> int:
    if job.state == "succeeded":
        metrics = done.metrics if isinstance(done, Done) else {}
        loss = metrics.get("final_loss")
        summary = [f"{metrics.get('steps')} steps", f"{metrics.get('tokens', 0):,} tokens"]
        if loss is not None:
            summary.append(f"final loss {loss:.4f}")
        if metrics.get("eval_loss") is not None:
            summary.append(f"eval loss {metrics['eval_loss']:.4f}")
        summary.append(f"in {format_duration(metrics.get('total_runtime_s'))}")
        console.print(f"[green]done:[/] {', '.join(summary)}", highlight=False)
        print(f"adapter: {job.adapter_path}")  # stdout: the one line a script wants
        return 0
    console.print(f"[red]{job.error_kind or job.state}:[/] {job.error_message}", highlight=False)
    if job.error_hint:
        console.print(f"hint: {job.error_hint}", highlight=False)
    if job.error_kind != "user_error":
        console.print(f"log: {Path(job.spec.output_dir) / LOG_FILE_NAME}", highlight=False)
    checkpoint = newest_checkpoint(job.spec.output_dir) or job.checkpoint_path
    if job.state == "cancelled" and checkpoint:
        console.print("resume with:", highlight=False)
        print(shlex.join(["qlora-bot", *_without_resume(argv), "--resume", checkpoint]))
    return EXIT_CODES.get(job.error_kind or "", 1)


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
