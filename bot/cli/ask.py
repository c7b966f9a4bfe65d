"""`qlora-bot ask`: stream an adapter's answer (and the base model's, with --compare) to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys

from bot.config import Config
from bot.jobs.asking import Question
from bot.jobs.local import configured_slots, open_service, terminal_requester
from bot.workers.serve_socket import SharedServeClient
from bot.workers.serve_worker import Waiting
from protocol.serve import Failed, Loading, Token


def add_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ask = commands.add_parser(
        "ask",
        parents=[common],
        help="generate from a fine-tuned adapter",
        description="Stream an adapter's answer to a prompt; --compare also shows the base model's.",
    )
    ask.add_argument("prompt", help="the question or instruction")
    ask.add_argument(
        "--adapter",
        required=True,
        help="adapter name or job id (see `qlora-bot adapters`), folder, or Hub id (owner/name)",
    )
    ask.add_argument("--base-model", help="base model (default: the one the adapter was trained on)")
    ask.add_argument("--compare", action="store_true", help="also answer with the base model alone")
    ask.add_argument("--max-new-tokens", type=int, help="answer length cap (default from config)")
    ask.add_argument("--temperature", type=float, default=0.0, help="0 answers greedily (default)")
    ask.add_argument("--seed", type=int, help="random seed for sampling")


def run_ask(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_ask(args, config))


async def _ask(args: argparse.Namespace, config: Config) -> int:
    # The flags are named after the question's fields.
    question = Question(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Question)})
    # The bot's worker, or one an earlier ask left, if one runs; else one that outlives this ask (until
    # serve.idle_timeout_s): the next ask skips loading the base model. Same device as the bot picks.
    client = SharedServeClient(
        config.serve,
        config.data_dir() / "serve",
        config.logs_dir(),
        python=config.worker.python,
        cuda_visible_devices=config.serve.device or configured_slots(config)[0].cuda_visible_devices,
        work_dir=config.data_dir() / "serve",
        cache_dir=config.cache_dir(),
    )
    try:
        async with open_service(config) as service:
            answering = await service.ask(question, terminal_requester(), client)
            if args.compare:  # two answers: each says whose it is
                print(f"--- adapter {answering.adapter.label} ---", flush=True)
            async for event in answering.events():
                if isinstance(event, Waiting):
                    print(f"waiting: {event.reason}", file=sys.stderr)
                elif isinstance(event, Loading):
                    print(f"loading {event.what.replace('_', ' ')} {event.name}...", file=sys.stderr)
                elif isinstance(event, Token) and event.variant == "adapter":
                    sys.stdout.write(event.text)
                    sys.stdout.flush()
                elif isinstance(event, Failed):
                    hint = f" ({event.hint})" if event.hint else ""
                    print(f"\n{event.kind}: {event.message}{hint}", file=sys.stderr)
                    return 1
    finally:
        await client.close()
    print()
    if args.compare:  # shown after the adapter's answer, not interleaved
        print(f"--- base model ({answering.adapter.base_model}) ---")
        print(answering.texts["base"])
    how = "started for later asks" if client.started else "already running"
    print(f"[serve worker pid {client.worker_pid}, {how}]", file=sys.stderr)
    for variant, result in answering.finished.items():
        print(
            f"[{variant}] {result.tokens} tokens in {result.seconds:.2f} s "
            f"({result.tokens_per_s:.1f} tokens/s)",
            file=sys.stderr,
        )
    return 0
