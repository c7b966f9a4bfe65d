"""The `qlora-bot` command line: parse arguments, load config, hand off to one command module, and show
what any command was refused (a UserError) in one place."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.text import Text

from bot.cli.adapters import add_command as add_adapters_command
from bot.cli.ask import add_command as add_ask_command
from bot.cli.demo import add_command as add_demo_command
from bot.cli.jobs import add_commands as add_job_commands
from bot.cli.options import add_common_options, package_version
from bot.cli.push import add_command as add_push_command
from bot.cli.train_flags import add_command as add_train_command
from bot.cli.train_flags import with_flags
from bot.config import Config, ConfigError, Secrets, load_config
from bot.jobs.service import EndUnrecorded, RunnerBusy
from bot.logging_setup import setup_cli_logging
from protocol.errors import UserError
from storage.database import DatabaseUnusable
from storage.migrate import MigrationError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qlora-bot",
        description="Fine-tune open LLMs with QLoRA, from the terminal or a Discord channel.",
        epilog="`qlora-bot COMMAND -h` shows a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"qlora-bot {package_version()}")
    add_common_options(parser)
    # The same options after the command; SUPPRESS leaves what came before it when they are not repeated.
    common = argparse.ArgumentParser(add_help=False)
    add_common_options(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")

    add_train_command(commands, common)
    add_job_commands(commands, common)
    add_ask_command(commands, common)
    add_adapters_command(commands, common)
    add_push_command(commands, common)
    add_demo_command(commands, common)
    commands.add_parser(
        "run",
        parents=[common],
        help="run the Discord bot and the job queue (needs DISCORD_TOKEN)",
        description="Run the Discord bot and the job queue until Ctrl-C; running jobs checkpoint and resume.",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # `qlora-bot` alone: what it can do, as git and llm answer
        parser.print_help()
        return 0
    secrets = Secrets.from_env()
    setup_cli_logging([secrets.discord_token, secrets.hf_token], verbose=args.verbose)
    try:
        config = load_config(args.config)
    except ConfigError as error:
        print(f"qlora-bot: {error}", file=sys.stderr)
        return 2
    try:
        return _run(args, config, sys.argv[1:] if argv is None else argv)
    except UserError as error:
        return _refused(error, args.command, config)
    except (DatabaseUnusable, MigrationError) as error:
        # The job database cannot be used: what to do fits one line, a traceback would bury it.
        print(f"qlora-bot: {error}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, config: Config, argv: list[str]) -> int:
    if args.command == "train":
        from bot.cli.train import run_train

        return run_train(args, config, argv)
    if args.command == "ask":
        from bot.cli.ask import run_ask

        return run_ask(args, config)
    if args.command == "adapters":
        from bot.cli.adapters import run_adapters

        return run_adapters(args, config)
    if args.command == "push":
        from bot.cli.push import run_push

        return run_push(args, config)
    if args.command == "demo":
        from bot.cli.demo import run_demo

        return run_demo(args, config)
    if args.command == "run":
        from bot.cli.run import run_bot

        return run_bot(config, verbose=args.verbose)
    from bot.cli import jobs

    commands = {"jobs": jobs.run_jobs, "job": jobs.run_job, "cancel": jobs.run_cancel}
    return commands[args.command](args, config)


def _refused(error: UserError, command: str, config: Config) -> int:
    """A UserError as the terminal shows it: `error: message (hint)`; `train` puts the hint on a line of
    its own, as it shows a job's end. Exit 2 (refused), but 1 for a job that ran and failed."""
    if isinstance(error, RunnerBusy):  # `run`: the one line names the data directory it is about
        print(f"qlora-bot: {error.message} ({config.data_dir()}); {error.hint}", file=sys.stderr)
        return 2
    console = Console(stderr=True, soft_wrap=True)  # long paths and hints stay on one line
    if command == "train":  # the service names spec fields; the person typed flags
        console.print(Text.assemble(("error:", "red"), f" {with_flags(error.message)}"))
        if error.hint:
            console.print(Text(f"hint: {with_flags(error.hint)}"))
    else:
        console.print(Text.assemble(("error:", "red"), f" {error}"))
    return 1 if isinstance(error, EndUnrecorded) else 2


if __name__ == "__main__":
    sys.exit(main())
