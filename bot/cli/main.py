"""The `qlora-bot` command line: parse arguments, load config, hand off to one command module, and show
what any command was refused (a UserError) in one place."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.text import Text

from bot.cli.ask import add_command as add_ask_command
from bot.cli.demo import add_command as add_demo_command
from bot.cli.jobs import add_commands as add_job_commands
from bot.cli.push import add_command as add_push_command
from bot.config import Config, ConfigError, Secrets, load_config
from bot.jobs.service import EndUnrecorded, RunnerBusy
from bot.logging_setup import setup_cli_logging
from protocol.errors import UserError
from protocol.job_spec import DATASET_FORMATS, SCHEDULERS
from storage.database import DatabaseUnusable
from storage.migrate import MigrationError


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", type=Path, help="config file (default: ./config.toml when present)")
    common.add_argument("-v", "--verbose", action="store_true", help="log debug messages")

    parser = argparse.ArgumentParser(prog="qlora-bot", description="Fine-tune open LLMs with QLoRA.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser(
        "train",
        parents=[common],
        help="fine-tune a base model on a dataset in a worker process",
        description="Run one QLoRA fine-tune with a live progress bar; Ctrl-C cancels at a checkpoint.",
    )
    train.add_argument(
        "--base-model", help="Hub model id or local folder (default: config defaults.base_model)"
    )
    train.add_argument(
        "--dataset",
        required=True,
        help="Hub dataset id, local file (.jsonl .json .csv .parquet .txt) or https URL",
    )
    train.add_argument(
        "--format", choices=DATASET_FORMATS, default="auto", help="dataset format (default: detect)"
    )
    train.add_argument("--dataset-config", help="Hub dataset configuration name")
    train.add_argument("--split", default="train", help="Hub dataset split (default: train)")
    train.add_argument("--name", help="adapter name (default: from the dataset)")
    train.add_argument("--r", type=int, help="LoRA rank")
    train.add_argument("--alpha", type=int, help="LoRA alpha (default: 2 * r)")
    train.add_argument("--dropout", type=float, help="LoRA dropout")
    train.add_argument("--target-modules", help="comma-separated module names (default: all linear layers)")
    train.add_argument("--epochs", type=float, help="passes over the data")
    train.add_argument("--max-steps", type=int, help="optimizer steps (overrides --epochs)")
    train.add_argument("--lr", type=float, help="peak learning rate")
    train.add_argument("--warmup", type=float, help="warm-up: a fraction below 1, else steps")
    train.add_argument("--scheduler", choices=SCHEDULERS, help="learning-rate schedule")
    train.add_argument("--batch-size", type=int, help="packed rows per micro-step")
    train.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step")
    train.add_argument("--max-length", type=int, help="tokens per packed row")
    train.add_argument("--eval-fraction", type=float, help="share of examples held out for eval loss")
    train.add_argument("--checkpoint-steps", type=int, help="save a checkpoint every N steps")
    train.add_argument("--seed", type=int, help="random seed")
    train.add_argument("--no-packing", action="store_true", help="one example per row")
    train.add_argument(
        "--gradient-checkpointing",
        choices=("auto", "on", "off"),
        help="recompute activations in the backward pass (default auto: on only when memory needs it)",
    )
    train.add_argument(
        "--no-gradient-checkpointing", action="store_true", help="same as --gradient-checkpointing off"
    )
    train.add_argument(
        "--memory-limit-gib",
        type=float,
        help="plan for at most this much GPU memory (16 fits a 7B job on a 24 GB card)",
    )
    train.add_argument(
        "--output", type=Path, help="job folder (default: a new folder under the data directory)"
    )
    train.add_argument("--resume", type=Path, metavar="CHECKPOINT_DIR", help="continue from a checkpoint")
    add_job_commands(commands, common)
    add_ask_command(commands, common)
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
    args = build_parser().parse_args(argv)
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
    if command == "train":
        console.print(Text.assemble(("error:", "red"), f" {error.message}"))
        if error.hint:
            console.print(Text(f"hint: {error.hint}"))
    else:
        console.print(Text.assemble(("error:", "red"), f" {error}"))
    return 1 if isinstance(error, EndUnrecorded) else 2


if __name__ == "__main__":
    sys.exit(main())
