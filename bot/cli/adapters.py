"""`qlora-bot adapters`: the finished adapters, by the name `qlora-bot ask --adapter` takes."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys

from rich.console import Console
from rich.table import Table

from bot.config import Config
from bot.jobs.local import open_service


def add_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    adapters = commands.add_parser(
        "adapters",
        parents=[common],
        help="list the finished adapters and the names `ask --adapter` takes",
        description="The finished adapters, newest first: ask one by its NAME or its JOB id.",
    )
    adapters.add_argument("--limit", type=int, default=50, help="at most this many (newest first)")


def run_adapters(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_adapters(args, config))


async def _adapters(args: argparse.Namespace, config: Config) -> int:
    # Piped output (scripts, tests) must not wrap names and paths at 80 columns.
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 240)
    async with open_service(config) as service:
        listed = await service.finished_adapters(limit=args.limit)
    if not listed:
        console.print("no finished adapters yet (`qlora-bot train` makes one)", highlight=False)
        return 0
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "BASE MODEL", "JOB", "CREATED", "LOSS", "HUB"):
        table.add_column(column, overflow="fold")
    for entry in listed:
        adapter = entry.adapter
        table.add_row(
            adapter.name,
            adapter.base_model,
            str(adapter.job_id),
            datetime.datetime.fromtimestamp(adapter.created_at).strftime("%Y-%m-%d %H:%M"),
            f"{entry.final_loss:.4f}" if entry.final_loss is not None else "",
            entry.hub_url or "",
        )
    console.print(table, highlight=False)
    console.print('ask one: qlora-bot ask --adapter NAME "your prompt" (or --adapter JOB)', highlight=False)
    return 0
