"""`qlora-bot demo`: a first fine-tune without a GPU or a download. Builds a tiny random Llama, its
tokenizer and a chat dataset in a folder (in a subprocess: building imports torch, which the bot
process never does), trains it with `qlora-bot train`, and prints the `qlora-bot ask` line to try it."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from bot.config import Config
from bot.workers.environment import worker_environment

DEMO_STEPS = 30
BUILD_TIMEOUT_S = 600.0
# The demo job's settings: small rows and a high learning rate so that a CPU learns the answers' pattern
# within a few dozen steps. Everything else is config.toml's [defaults], as for any job.
TRAIN_FLAGS = (
    "--max-length", "64",
    "--batch-size", "2",
    "--grad-accum", "1",
    "--r", "8",
    "--lr", "5e-3",
    "--warmup", "0",
)  # fmt: skip


def add_command(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="first run: fine-tune a tiny model built here, on the CPU, in a few minutes",
        description=(
            "Build a tiny random Llama and a chat dataset (nothing is downloaded), fine-tune it with "
            "`qlora-bot train`, and print the `qlora-bot ask` command to try the adapter."
        ),
    )
    demo.add_argument(
        "--dir", type=Path, help="folder for the model, dataset and jobs (default: DATA_DIR/demo)"
    )
    demo.add_argument(
        "--max-steps", type=int, default=DEMO_STEPS, help=f"optimizer steps (default: {DEMO_STEPS})"
    )


def run_demo(args: argparse.Namespace, config: Config) -> int:
    console = Console(stderr=True, soft_wrap=True)
    folder = (args.dir or config.data_dir() / "demo").expanduser().resolve()
    built = _build(folder, config, console)
    if built is None:
        return 1
    model, dataset, prompt = built
    job_dir = _free_job_dir(folder)
    argv = ["train", "--base-model", str(model), "--dataset", str(dataset), "--name", "demo"]
    argv += ["--max-steps", str(args.max_steps), *TRAIN_FLAGS, "--output", str(job_dir)]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    console.print(f"training: qlora-bot {' '.join(argv)}", highlight=False)
    from bot.cli.main import build_parser  # the very command a person would type, parsed the same way
    from bot.cli.train import run_train

    code = run_train(build_parser().parse_args(argv), config, argv)
    if code == 0:
        console.print("try it (the base model's answer follows the adapter's):", highlight=False)
        print(f'qlora-bot ask --adapter {job_dir / "adapter"} --compare "{prompt}"')
    return code


def _build(folder: Path, config: Config, console: Console) -> tuple[Path, Path, str] | None:
    """Model, dataset and a prompt to try, built by `python -m trainer.demo_model` (seeded, so a rebuild
    writes the same files and earlier demo adapters still fit the model)."""
    console.print(f"building a tiny random Llama and a chat dataset in {folder}", highlight=False)
    python = config.worker.python or sys.executable
    # A worker's environment, as every trainer process gets it: the Hub offline (nothing is downloaded),
    # no secrets, the libraries' caches under the data directory.
    env = worker_environment(os.environ, hub_token=False, cache_root=config.cache_dir())
    try:
        done = subprocess.run(
            [python, "-m", "trainer.demo_model", str(folder)],
            capture_output=True,
            text=True,
            env=env,
            timeout=BUILD_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        console.print(f"[red]error:[/] building the demo model failed: {error}", highlight=False)
        return None
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-15:])
        console.print(f"[red]error:[/] building the demo model failed:\n{tail}", highlight=False)
        return None
    built = json.loads(done.stdout.strip().splitlines()[-1])
    return Path(built["model"]), Path(built["dataset"]), built["try"]


def _free_job_dir(folder: Path) -> Path:
    """DIR/job-1, job-2, ...: each demo run is a job of its own, and earlier ones stay to compare."""
    number = 1
    while (folder / f"job-{number}").exists():
        number += 1
    return folder / f"job-{number}"
