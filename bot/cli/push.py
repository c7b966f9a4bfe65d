"""`qlora-bot push JOB_ID_OR_ADAPTER_DIR [--repo NS/NAME] [--public]`: publish an adapter to the Hub by
hand, or retry a job's failed publish (the job's hub state is updated as with /push)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from pathlib import Path

from bot.config import Config, Secrets
from bot.hub.access import HubAccess
from bot.hub.model_card import is_hub_id
from bot.hub.publisher import HubPublisher, PublishRequest
from bot.jobs.local import open_service, open_store, terminal_requester
from bot.jobs.outcomes import adapter_name
from protocol.codec import to_dict
from protocol.errors import ProtocolError, UserError
from protocol.job_folder import read_loss_history, read_metrics
from storage.store import Store

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
    request = _folder_request(folder.resolve(), args.repo, config.hub.private if private is None else private)
    async with await open_store(config) as store:  # it knows which Hub repos qlora-bot created
        request = await _with_owner(store, request)
        publisher = HubPublisher(HubAccess.for_config(config, Secrets.from_env().hf_token), store.hub_repos)
        try:
            published = await publisher.publish(request)
        except UserError as error:
            print(f"publishing {folder} failed: {error}", file=sys.stderr)
            return EXIT_FAILED
    print(f"published: {published.url} (commit {published.commit})")
    return 0


async def _job_of_adapter(config: Config, name: str) -> int:
    async with await open_store(config) as store:
        adapter = await store.adapter(name)
    if adapter is None:
        raise UserError(
            f"{name!r} is neither a job id, an adapter name nor a folder", "see `qlora-bot jobs --all`"
        )
    return adapter.job_id


async def _with_owner(store: Store, request: PublishRequest) -> PublishRequest:
    """The adapter a folder's repo is created for: the job's adapter when the folder is a job's own (so a
    repo made by that job's publish takes it), else the folder itself."""
    folder = request.folder
    job = await store.job_in_folder(str(folder.parent))
    if job is not None and job.adapter_path and Path(job.adapter_path).resolve() == folder:
        return dataclasses.replace(request, adapter=adapter_name(job), job_id=job.id)
    return dataclasses.replace(request, adapter=f"folder:{folder}")


def _folder_request(folder: Path, repo: str, private: bool) -> PublishRequest:
    """A folder trained by qlora-bot sits in its job folder, beside its metrics and loss history: the card
    and chart use them when they are there."""
    try:
        metrics = read_metrics(folder.parent)
        history = read_loss_history(folder.parent)
    except ProtocolError as error:
        raise UserError(
            f"the job folder of {folder} holds a file qlora-bot cannot read ({error})",
            "move that file aside to publish without it",
        ) from None
    train = [(p.step, p.loss) for p in history.train if p.loss is not None] if history else []
    evals = [(p.step, p.eval_loss) for p in history.eval] if history else []
    return PublishRequest(
        folder=folder,
        name=repo.split("/", 1)[1],
        private=private,
        repo=repo,
        metrics=to_dict(metrics) if metrics is not None else {},
        train_loss=train,
        eval_loss=evals,
        any_namespace=terminal_requester().is_admin,  # whoever runs the command line is an admin
    )
