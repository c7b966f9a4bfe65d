"""`qlora-bot jobs`, `job ID` and `cancel ID`: the job store seen from the terminal."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys

from rich.console import Console
from rich.table import Table

from bot.cli.progress import describe_end, describe_event
from bot.config import Config
from bot.jobs.adapter_names import shown_name
from bot.jobs.local import open_service, terminal_requester
from bot.jobs.service import JobService
from bot.jobs.summaries import starts_in, why_it_ended
from protocol.sources import redact_url
from storage.models import JOB_STATES, Job


def run_jobs(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_with_service(config, lambda service, console: _jobs(service, console, args)))


def run_job(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_with_service(config, lambda service, console: _job(service, console, args.id)))


def run_cancel(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_with_service(config, lambda service, console: _cancel(service, console, args.id)))


async def _with_service(config: Config, command) -> int:
    # Piped output (scripts, tests) must not wrap paths at 80 columns.
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
    async with open_service(config) as service:
        await command(service, console)
    return 0


async def _jobs(service: JobService, console: Console, args: argparse.Namespace) -> None:
    owner = None if args.all else terminal_requester().owner
    states = [args.state] if args.state else None
    jobs = await service.list(owner=owner, states=states, limit=args.limit)
    if not jobs:
        console.print("no jobs" + ("" if args.all else " of yours (--all shows everyone's)"))
        return
    positions = {entry.job.id: entry for entry in await service.queue()}
    table = Table(box=None, header_style="bold")
    # ADAPTER is the name `ask --adapter` takes; ERROR says why a job failed (`job ID` has all of it).
    for column in ("ID", "NAME", "STATE", "PROGRESS", "LOSS", "ADAPTER", "OWNER", "CREATED", "ERROR"):
        table.add_column(column, overflow="fold" if column == "ERROR" else "ellipsis")
    for job in jobs:
        event = await service.last_progress(job.id)
        table.add_row(
            str(job.id),
            job.name,
            _state(job, positions.get(job.id)),
            f"{event.step}/{event.total_steps}" if event else "",
            f"{event.loss:.4f}" if event and event.loss is not None else "",
            shown_name(job) or "",
            job.owner,
            _when(job.created_at),
            why_it_ended(job.state, job.error_kind, job.error_message),
        )
    console.print(table)


async def _job(service: JobService, console: Console, job_id: int) -> None:
    report = await service.report(job_id)
    job = report.job
    entry = next((entry for entry in await service.queue() if entry.job.id == job_id), None)
    rows = [
        ("state", _state(job, entry)),
        ("owner", job.owner),
        ("base model", job.spec.base_model),
        ("dataset", _dataset(job)),
        (
            "LoRA",
            f"r={job.spec.lora.r}, alpha={job.spec.lora.resolved_alpha}, dropout={job.spec.lora.dropout}",
        ),
        ("attempt", str(job.attempt)),
        ("created", _when(job.created_at)),
        ("started", _when(job.started_at)),
        ("finished", _when(job.finished_at)),
        ("folder", job.folder),
        ("log", str(report.log)),
        ("checkpoint", job.checkpoint_path or ""),
        ("adapter", job.adapter_path or ""),
        ("ask it as", report.adapter.name if report.adapter is not None else ""),
        ("hub", _hub(job)),
        ("error", f"{job.error_kind}: {describe_end(job)}" if job.error_message else ""),
        ("hint", job.error_hint or ""),
    ]
    console.print(f"job {job.id}: {job.name}", style="bold", highlight=False)
    for label, value in rows:
        if value:
            console.print(f"  {label:<11} {value}", highlight=False, markup=False)
    for attempt in report.attempts:
        ended = f"{attempt.outcome} at {_when(attempt.finished_at)}" if attempt.outcome else "running"
        detail = f" ({attempt.detail})" if attempt.detail else ""
        console.print(f"attempt {attempt.number} on {attempt.slot}: {ended}{detail}", highlight=False)
    events = await service.events(job_id)
    if events:
        console.print("last events:", style="bold")
        for stored in events[-10:]:
            console.print(f"  {_when(stored.created_at)}  {describe_event(stored.event)}", highlight=False)
    if report.log_tail:
        console.print("log (last lines):", style="bold")
        for line in report.log_tail.splitlines():
            console.print(f"  {line}", highlight=False, markup=False)


async def _cancel(service: JobService, console: Console, job_id: int) -> None:
    job = await service.cancel(job_id, terminal_requester())
    if job.is_terminal:
        console.print(f"job {job_id} cancelled", highlight=False)
    else:
        console.print(
            f"job {job_id}: cancel requested; its worker saves a checkpoint, then stops", highlight=False
        )


def _dataset(job: Job) -> str:
    """An upload by the name it was given, and where it is stored; a URL without its secrets."""
    dataset = job.spec.dataset
    source = redact_url(dataset.source)
    return f"{dataset.label} ({source})" if dataset.label else source


def _state(job: Job, entry) -> str:
    if job.state == "queued" and entry is not None:
        return f"queued #{entry.position}, {starts_in(entry.eta_s)}"
    if job.state == "running" and job.phase:
        return f"running ({job.phase})"
    return job.state


def _hub(job: Job) -> str:
    if job.hub_state == "pushed":
        return f"{job.hub_url} (commit {job.hub_commit})"
    if job.hub_state == "push_failed":
        return f"not published: {job.hub_error} (retry: qlora-bot push {job.id})"
    return "publishing" if job.publish_pending else ""


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return ""
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def add_commands(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    jobs = commands.add_parser("jobs", parents=[common], help="list jobs (yours, or --all)")
    jobs.add_argument("--all", action="store_true", help="everyone's jobs, not only yours")
    jobs.add_argument("--state", choices=JOB_STATES, help="only jobs in this state")
    jobs.add_argument("--limit", type=int, default=50, help="at most this many (newest first)")
    job = commands.add_parser("job", parents=[common], help="show one job: details, attempts, last events")
    job.add_argument("id", type=int, help="the job's id (as `qlora-bot jobs` lists it)")
    cancel = commands.add_parser(
        "cancel", parents=[common], help="cancel a job (running jobs checkpoint first)"
    )
    cancel.add_argument("id", type=int, help="the job's id (as `qlora-bot jobs` lists it)")
