"""`qlora-bot run` (and `python -m bot`): the Discord bot and the job queue in one process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from bot.cli.discord_failures import DiscordUnusable, discord_failures, quiet_voice_warnings
from bot.config import Config, Secrets
from bot.discord_bot.client import QloraBot
from bot.hub.access import HubAccess
from bot.jobs.executor import LocalExecutor
from bot.jobs.local import configured_slots, open_store
from bot.jobs.service import JobService
from bot.logging_setup import setup_logging
from bot.workers.data_check import DataChecker
from bot.workers.serve_worker import ServeClient

log = logging.getLogger(__name__)

NO_TOKEN_HELP = """\
qlora-bot: DISCORD_TOKEN is not set.

To create the bot:
  1. https://discord.com/developers/applications -> New Application; open "Bot" -> Reset Token.
  2. Put the token in the environment, never in a file:  export DISCORD_TOKEN=...
  3. No privileged intents are needed (leave Presence, Server Members and Message Content off).
  4. Invite it: OAuth2 -> URL Generator, scopes "bot" and "applications.commands", permissions
     Send Messages, Embed Links, Attach Files, Read Message History; open the URL and pick a server.
  5. Optional: put the server's id in config.toml ([discord] guild_ids) so commands appear at once.
Then run `qlora-bot run` again. Set HF_TOKEN too to fine-tune gated models and publish adapters.
"""


def run_bot(config: Config, verbose: bool = False) -> int:
    secrets = Secrets.from_env()
    if not secrets.discord_token:
        print(NO_TOKEN_HELP, file=sys.stderr)
        return 2
    log_path = setup_logging(config.logs_dir(), [secrets.discord_token, secrets.hf_token], verbose)
    print(f"qlora-bot: logging to {log_path}", file=sys.stderr)
    try:
        asyncio.run(serve(config, secrets))  # RunnerBusy: another process runs the queue (shown by main)
    except DiscordUnusable as error:
        print(f"qlora-bot: {error}", file=sys.stderr)
        return error.exit_code
    return 0


async def serve(
    config: Config,
    secrets: Secrets,
    executor: LocalExecutor | None = None,
    stop: asyncio.Event | None = None,
    data_checker: DataChecker | None = None,
    **client_options: Any,
) -> None:
    """Run the queue and the Discord client until `stop` (by default SIGINT/SIGTERM); then stop both."""
    async with await open_store(config) as store:
        hub = HubAccess.for_config(config, secrets.hf_token)
        service = JobService(store, config, hub=hub, data_checker=data_checker)
        await service.start_runner(
            executor or LocalExecutor(python=config.worker.python), configured_slots(config)
        )
        serve_client = make_serve_client(config, service)
        quiet_voice_warnings()
        bot = QloraBot(
            config=config,
            service=service,
            serve_client=serve_client,
            hub_push_default=secrets.hf_token is not None,
            **client_options,
        )
        if stop is None:
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
        try:
            async with bot:
                client = asyncio.create_task(bot.start(secrets.discord_token or ""))
                waiter = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({client, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if client in done:
                    with discord_failures():
                        client.result()  # a login failure surfaces here
        finally:
            log.info("stopping: running jobs save a checkpoint and resume at the next start")
            with contextlib.suppress(Exception):
                await bot.close()
            await serve_client.close()
            await service.close()


def make_serve_client(config: Config, service: JobService) -> ServeClient:
    """The serve worker runs on serve.device, else the first configured GPU; it may have to wait for
    training to leave that GPU when serve.share_gpu_with_training is off."""
    slots = configured_slots(config)
    device = config.serve.device or slots[0].cuda_visible_devices

    async def gpu_wait() -> str | None:
        if config.serve.share_gpu_with_training:
            return None
        training = [job for job in await service.list(states=["running"], limit=100)]
        if not training:
            return None
        return f"the GPU is busy training job {training[0].id} (serve.share_gpu_with_training is off)"

    return ServeClient(
        config.serve,
        config.logs_dir() / "serve.log",
        python=config.worker.python,
        cuda_visible_devices=device,
        gpu_wait=gpu_wait,
        work_dir=config.data_dir() / "serve",
        cache_dir=config.cache_dir(),
        socket_dir=config.data_dir() / "serve",  # `qlora-bot ask` on this machine uses this worker too
    )
