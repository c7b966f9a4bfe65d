"""`qlora-bot push JOB_ID_OR_ADAPTER_DIR [--repo NS/NAME] [--public]`: publish an adapter to the Hub by
hand, or retry a job's failed publish (the job's hub state is updated as with /push)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from bot.config import Config
from bot.hub.destination import RepoRefused
from bot.hub.model_card import is_hub_id
from bot.hub.publisher import PublishFailed
from bot.jobs.local import open_service, terminal_requester
from protocol.errors import UserError

EXIT_FAILED = 1  # a refusal (UserError) exits 2, in bot/cli/main.py


def add_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    push = commands.add_parser(
        "push",
        parents=[common],
        help="publish an adapter to the Hugging Face Hub (needs HF_TOKEN with write access)",
        description="Publish a job's adapter (by job id or adapter name) or an adapter folder to the Hub, "
        "with its model card; retries a job's failed publish.",
    )
    push.add_argument(
        "target", metavar="JOB_ID_OR_ADAPTER_DIR", help="job id, adapter name, or adapter folder"
    )
    push.add_argument(
        "--repo",
        help="Hub repo namespace/name (default for a job: hub.namespace or your user / adapter name); "
        "a repo that exists is written only if qlora-bot created it for this adapter",
    )
    push.add_argument(
        "--public",
        action="store_true",
        help="make the repo public (default: hub.private in config.toml, normally private); "
        "its visibility is set before the upload",
    )


def run_push(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_push(args, config))


async def _push(args: argparse.Namespace, config: Config) -> int:
    if args.repo is not None and not is_hub_id(args.repo):
        raise UserError(f"--repo {args.repo!r} is not a Hub repo id", "write it as namespace/name")
    private = False if args.public else None
    folder = Path(args.target).expanduser()
    job_id = int(args.target) if args.target.isdigit() else None
    if job_id is None and not folder.is_dir():
        job_id = await _job_of_adapter(config, args.target)
    if job_id is not None:
        async with open_service(config) as service:
            job = await service.publish(job_id, terminal_requester(), repo=args.repo, private=private)
        if job.hub_state != "pushed":
            print(f"publishing job {job_id} failed: {job.hub_error}", file=sys.stderr)
            return EXIT_FAILED
        print(f"published: {job.hub_url} (commit {job.hub_commit})")
        return 0
    if args.repo is None:
        raise UserError("publishing a folder needs --repo namespace/name", "add --repo")
    async with open_service(config) as service:  # it knows which Hub repos qlora-bot created
        try:
            published = await service.publish_folder(
                folder.resolve(), terminal_requester(), repo=args.repo, private=private
            )
        except (PublishFailed, RepoRefused) as error:  # an unreadable folder is a refusal: exits 2
            print(f"publishing {folder} failed: {error}", file=sys.stderr)
            return EXIT_FAILED
    print(f"published: {published.url} (commit {published.commit})")
    return 0


async def _job_of_adapter(config: Config, name: str) -> int:
    async with open_service(config) as service:
        adapter = await service.adapter(name)
    if adapter is None:
        raise UserError(
            f"{name!r} is neither a job id, an adapter name nor a folder", "see `qlora-bot jobs --all`"
        )
    return adapter.job_id
