"""`qlora-bot train`: build the job spec from flags and config, run the worker, show its progress."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.text import Text

from bot.cli.output_folder import output_problems
from bot.cli.progress import TerminalProgress, describe_end
from bot.cli.stop_signals import StopSignals
from bot.cli.train_flags import spec_overrides, with_flags
from bot.config import Config
from bot.jobs.executor import LocalExecutor
from bot.jobs.local import configured_slots, open_service, terminal_requester
from bot.jobs.requests import JobRequest, request_spec
from bot.jobs.results import JobReport
from bot.jobs.scheduler import Slot
from bot.jobs.service import JobService, Requester, RunnerBusy
from bot.jobs.summaries import about, clock, compact_count, in_line, waiting_for
from protocol.job_folder import TRAINER_STATE, newest_checkpoint
from protocol.job_spec import JobSpec, spec_problems
from storage.models import Job

EXIT_CODES = {"user_error": 2, "cancelled": 130}


def build_spec(args: argparse.Namespace, config: Config) -> JobSpec:
    """The spec the flags ask for over the configured defaults, the names made as this machine reads them."""
    return request_spec(job_request(args), config.defaults, local_paths=True)


def job_request(args: argparse.Namespace) -> JobRequest:
    modules = [m.strip() for m in (args.target_modules or "").split(",") if m.strip()]
    return JobRequest(
        base_model=args.base_model,
        dataset=args.dataset,
        format=args.format,
        dataset_config=args.dataset_config,
        split=args.split,
        name=args.name,
        lora={**spec_overrides(args, "lora"), "target_modules": tuple(modules) or None},
        training={
            **spec_overrides(args, "training"),
            "packing": False if args.no_packing else None,
            "gradient_checkpointing": _checkpointing_choice(args),
        },
        resume_from=str(args.resume.expanduser().resolve()) if args.resume else None,
    )


def _checkpointing_choice(args: argparse.Namespace) -> bool | str | None:
    """None leaves the configured default; --no-gradient-checkpointing predates --gradient-checkpointing."""
    if args.no_gradient_checkpointing:
        return False
    return {"on": True, "off": False, "auto": "auto", None: None}[args.gradient_checkpointing]


def run_train(args: argparse.Namespace, config: Config, argv: list[str]) -> int:
    console = Console(stderr=True, soft_wrap=True)  # long paths and hints stay on one line
    spec = build_spec(args, config)
    problems = spec_problems(spec)
    if args.resume and not (args.resume / TRAINER_STATE).exists():
        problems.append(f"--resume: {args.resume} is not a checkpoint folder (no {TRAINER_STATE})")
    job_dir = args.output.expanduser().resolve() if args.output else None
    if job_dir is not None:
        problems += output_problems(job_dir)
    if problems:
        for problem in problems:
            console.print(Text.assemble(("error:", "red"), f" {with_flags(problem)}"))
        return 2
    return asyncio.run(_train(job_request(args), spec, job_dir, config, console, argv))


async def _train(
    request: JobRequest,
    spec: JobSpec,
    job_dir: Path | None,
    config: Config,
    console: Console,
    argv: list[str],
) -> int:
    """Queue the job and follow it to its end; a UserError (refused, or its end unrecorded) is shown by
    bot/cli/main.py."""
    requester = terminal_requester()
    signals = StopSignals(console)
    signals.install()
    try:
        async with open_service(config) as service:
            submitting = asyncio.create_task(
                _job_to_follow(service, request, spec, job_dir, requester, console)
            )
            signals.on_first = submitting.cancel  # stopped before the job exists: no job at all
            try:
                job = await submitting
            except asyncio.CancelledError:
                console.print("cancelled before the job was queued", highlight=False)
                return signals.exit_code(EXIT_CODES["cancelled"], cancelled_code=EXIT_CODES["cancelled"])
            slots = configured_slots(config)
            takeover = asyncio.create_task(_run_queue_when_free(service, job.id, config, console))
            try:
                await _follow(service, job, requester, console, signals, _Queue(slots, config))
            finally:
                takeover.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await takeover
            report = await service.report(job.id)
            _say_what_is_handed_back(service, job.id, console)
    finally:
        signals.remove()
    code = _report(report, argv, console)
    return signals.exit_code(code, cancelled_code=EXIT_CODES["cancelled"])


async def _job_to_follow(
    service: JobService,
    request: JobRequest,
    spec: JobSpec,
    job_dir: Path | None,
    requester: Requester,
    console: Console,
) -> Job:
    """The job this command follows: a new one, or, for --resume of a checkpoint whose own job has not
    ended (its runner died and left it queued or running), that job, which resumes by itself."""
    if spec.resume_from:
        owner = await service.job_of_checkpoint(spec.resume_from)
        if owner is not None and not owner.is_terminal:
            console.print(
                f"job {owner.id} owns that checkpoint and has not ended ({owner.state}); it resumes from "
                "its newest checkpoint by itself: following it",
                highlight=False,
            )
            return owner
    job = await service.submit_request(request, requester, job_dir=job_dir)
    console.print(f"job {job.id}: folder {job.folder}", highlight=False)
    if spec.resume_from:
        console.print(f"job {job.id} continues from {spec.resume_from}", highlight=False)
    return job


@dataclass(frozen=True)
class _Queue:
    """The slots the queue runs on (as this machine sees them) and the per-person limit."""

    slots: list[Slot]
    config: Config


async def _show_where_it_waits(
    service: JobService, job_id: int, queue: _Queue, display: TerminalProgress
) -> None:
    """While the job is queued: its place in line, the expected wait and what it waits for, every 2 s."""
    kind = "CPU" if all(slot.name == "cpu" for slot in queue.slots) else "GPU"
    while True:
        if not display.queued:  # running (or not yet shown as queued): nothing to ask the queue
            await asyncio.sleep(2.0)
            continue
        entries = await service.queue(slot_count=len(queue.slots))
        entry = next((entry for entry in entries if entry.job.id == job_id), None)
        if entry is not None:
            running = await service.list(states=["running"])
            ids = sorted(other.id for other in running)
            limit = queue.config.queue.max_running_per_user
            own = sum(1 for other in running if other.owner == entry.job.owner)
            own_limit = limit if len(running) < len(queue.slots) and own >= limit else None
            reason = waiting_for(kind, len(queue.slots), ids, own_limit)
            display.waiting(in_line(entry.position), about(entry.eta_s) if ids else None, reason)
        await asyncio.sleep(2.0)


async def _follow(
    service: JobService, job: Job, requester: Requester, console: Console, signals: StopSignals, queue: _Queue
) -> None:
    """Render the job until it ends; the first stop signal cancels it (at a checkpoint), a second kills it."""
    pending: set[asyncio.Task] = set()

    def cancel() -> None:
        task = asyncio.get_running_loop().create_task(service.cancel(job.id, requester))
        pending.add(task)
        task.add_done_callback(pending.discard)

    signals.on_first, signals.on_second = cancel, lambda: service.kill(job.id)
    if signals.received:
        cancel()  # the signal came just as the job was queued
    display = TerminalProgress(console)
    watching = asyncio.create_task(_show_where_it_waits(service, job.id, queue, display))
    try:
        async for update in service.subscribe(job.id):
            with contextlib.suppress(OSError):  # a closed terminal must not stop the shutdown
                if update.event is not None:
                    display.handle(update.event)
                else:
                    display.state(update.job)
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await watching
        signals.on_first = signals.on_second = None
        with contextlib.suppress(OSError):
            display.close()


async def _run_queue_when_free(service: JobService, job_id: int, config: Config, console: Console) -> None:
    """Run the queue here, every queued job in the fair order (jobs a dead runner left behind
    included), unless another qlora-bot process runs it: then our job runs there, and we take over
    when that process stops before our job ended."""
    executor = LocalExecutor(python=config.worker.python)
    announced = False
    while True:
        try:
            await service.start_runner(executor, configured_slots(config))
            return
        except RunnerBusy as busy:
            if not announced:
                console.print(
                    f"qlora-bot (pid {busy.holder_pid}) runs the queue; job {job_id} runs there",
                    highlight=False,
                )
                announced = True
            await asyncio.sleep(2.0)


def _say_what_is_handed_back(service: JobService, job_id: int, console: Console) -> None:
    """Other jobs this process ran are stopped at a checkpoint when it exits (service.close) and go
    back to the queue, where the next qlora-bot process to run it (`run` or `train`) resumes them."""
    others = [other for other in service.running_here() if other != job_id]
    if others:
        listed = ", ".join(str(other) for other in others)
        console.print(
            f"job(s) {listed} also ran here: each stops at a checkpoint and resumes when qlora-bot runs "
            "the queue next (`qlora-bot run`, or the next `qlora-bot train`)",
            highlight=False,
        )


def _report(report: JobReport, argv: list[str], console: Console) -> int:
    job, metrics = report.job, report.metrics
    if job.state == "succeeded":
        console.print(f"[green]done:[/] {final_figures(metrics)}", highlight=False)
        print(f"adapter: {job.adapter_path}")  # stdout: the one line a script wants
        if report.adapter is not None:  # the name `ask` takes, and the job id that works as well
            name = report.adapter.name
            console.print(
                f'ask it: qlora-bot ask --adapter {name} "your prompt" (or --adapter {job.id})',
                highlight=False,
            )
        return 0
    # A refusal of the person's input names the flags they typed, as the pre-queue checks do.
    named = with_flags if job.error_kind == "user_error" else str
    console.print(f"[red]{job.error_kind or job.state}:[/] {named(describe_end(job))}", highlight=False)
    if job.error_hint:
        console.print(f"hint: {named(job.error_hint)}", highlight=False)
    if job.error_kind != "user_error":
        console.print(f"log: {report.log}", highlight=False)
    checkpoint = newest_checkpoint(job.folder) or job.checkpoint_path
    if job.state == "cancelled" and checkpoint:
        console.print("resume with:", highlight=False)
        print(shlex.join(["qlora-bot", *_without_resume(argv), "--resume", checkpoint]))
    return EXIT_CODES.get(job.error_kind or "", 1)


def final_figures(metrics: dict) -> str:
    """Each final figure once: the live line that showed them while training is cleared
    (bot/cli/progress.py)."""
    tokens, runtime = metrics.get("tokens", 0), metrics.get("train_runtime_s")
    summary = [f"{metrics.get('steps')} steps", f"{tokens:,} tokens"]
    if tokens and runtime:
        summary[-1] += f" at {compact_count(tokens / runtime)} tok/s"
    if metrics.get("final_loss") is not None:
        summary.append(f"final loss {metrics['final_loss']:.4f}")
    if metrics.get("eval_loss") is not None:
        summary.append(f"eval loss {metrics['eval_loss']:.4f}")
    summary.append(f"in {clock(metrics.get('total_runtime_s'))}")
    return ", ".join(summary)


def _without_resume(argv: list[str]) -> list[str]:
    """The command line without --resume and --output: a resume is a new job in a folder of its own
    (the cancelled job's folder, with the checkpoint it resumes from, is only read)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in ("--resume", "--output"):
            skip = True
        elif not arg.startswith(("--resume=", "--output=")):
            kept.append(arg)
    return kept
