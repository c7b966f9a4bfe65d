"""`qlora-bot ask`: stream an adapter's answer (and the base model's, with --compare) to the terminal."""

from __future__ import annotations

import argparse
import asyncio
import sys

from bot.config import Config, Secrets
from bot.hub.access import HubAccess
from bot.jobs.asking import build_request, resolve_adapter
from bot.jobs.local import open_store
from bot.workers.serve_worker import ServeClient, Waiting
from protocol.errors import UserError
from protocol.serve import Failed, Finished, Loading, Token


def add_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    ask = commands.add_parser(
        "ask",
        parents=[common],
        help="generate from a fine-tuned adapter",
        description="Stream an adapter's answer to a prompt; --compare also shows the base model's.",
    )
    ask.add_argument("prompt", help="the question or instruction")
    ask.add_argument(
        "--adapter", required=True, help="adapter name (see `qlora-bot jobs`), folder, or Hub id (owner/name)"
    )
    ask.add_argument("--base-model", help="base model (default: the one the adapter was trained on)")
    ask.add_argument("--compare", action="store_true", help="also answer with the base model alone")
    ask.add_argument("--max-new-tokens", type=int, help="answer length cap (default from config)")
    ask.add_argument("--temperature", type=float, default=0.0, help="0 answers greedily (default)")
    ask.add_argument("--seed", type=int, help="random seed for sampling")


def run_ask(args: argparse.Namespace, config: Config) -> int:
    try:
        return asyncio.run(_ask(args, config))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


async def _ask(args: argparse.Namespace, config: Config) -> int:
    async with await open_store(config) as store:
        hub = HubAccess.for_config(config, Secrets.from_env().hf_token)
        adapter = await resolve_adapter(store, args.adapter, args.base_model, hub=hub)
    request = build_request(
        adapter,
        args.prompt,
        config.serve,
        compare=args.compare,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        seed=args.seed,
    )
    client = ServeClient(
        config.serve,
        config.logs_dir() / "serve.log",
        python=config.worker.python,
        work_dir=config.data_dir() / "serve",
        cache_dir=config.cache_dir(),
    )
    base_answer: list[str] = []
    finished: dict[str, Finished] = {}
    try:
        async for event in client.generate(request):
            if isinstance(event, Waiting):
                print(f"waiting: {event.reason}", file=sys.stderr)
            elif isinstance(event, Loading):
                print(f"loading {event.what.replace('_', ' ')} {event.name}...", file=sys.stderr)
            elif isinstance(event, Token) and event.variant == "adapter":
                sys.stdout.write(event.text)
                sys.stdout.flush()
            elif isinstance(event, Token):
                base_answer.append(event.text)  # shown after the adapter's answer, not interleaved
            elif isinstance(event, Finished):
                finished[event.variant] = event
            elif isinstance(event, Failed):
                print(
                    f"\n{event.kind}: {event.message}" + (f" ({event.hint})" if event.hint else ""),
                    file=sys.stderr,
                )
                return 1
    finally:
        await client.close()
    print()
    if args.compare:
        print(f"--- base model ({adapter.base_model}) ---")
        print("".join(base_answer))
    for variant, result in finished.items():
        print(
            f"[{variant}] {result.tokens} tokens in {result.seconds:.2f} s "
            f"({result.tokens_per_s:.1f} tokens/s)",
            file=sys.stderr,
        )
    return 0
