"""The bot process stays light (no torch stack), and imports flow one way (STYLE.md rule 1)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import bot
import protocol
import trainer.data

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "trl", "datasets", "accelerate")


def test_the_bot_process_never_imports_the_training_stack():
    found = pkgutil.walk_packages(bot.__path__, prefix="bot.")  # recurses into bot.jobs, bot.discord_bot
    modules = sorted(info.name for info in found if not info.name.endswith("__main__"))
    assert {"bot.jobs.service", "bot.discord_bot.client", "bot.discord_bot.cogs.finetune"} <= set(modules)
    modules += ["storage.store"] + [
        f"protocol.{info.name}" for info in pkgutil.iter_modules(protocol.__path__)
    ]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert result.stdout.strip() == "[]", f"imported by the bot process: {result.stdout}"


def test_the_data_stage_never_imports_the_model_stack():
    """Every trainer.data module (and trainer.worker_io, which it uses) imports without torch, transformers,
    peft, bitsandbytes, trl, accelerate, or the training and serving stages: a dataset is read and checked
    before the model stack is loaded. datasets and pyarrow are not imported either: they are slow to import,
    and only the functions reading a Hub dataset or a Parquet file import them, when called. numpy may be."""
    found = pkgutil.walk_packages(trainer.data.__path__, prefix="trainer.data.")
    modules = [*sorted(info.name for info in found), "trainer.worker_io"]
    assert {"trainer.data.sources", "trainer.data.fetching", "trainer.data.check"} <= set(modules)
    forbidden = ("torch", "transformers", "peft", "bitsandbytes", "trl", "accelerate", "datasets", "pyarrow")
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"heavy = {{m.split('.')[0] for m in sys.modules if m.split('.')[0] in {forbidden!r}}}\n"
        "stages = {m for m in sys.modules if m.startswith(('trainer.training', 'trainer.serving'))}\n"
        "print(sorted(heavy | stages))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert result.stdout.strip() == "[]", f"imported by the data stage: {result.stdout}"


def _imported_packages(folder: Path) -> dict[str, set[str]]:
    """Top-level package of every import in each module under `folder` (relative imports: none are used)."""
    found = {}
    for path in sorted(folder.rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(REPO_ROOT))] = names
    return found


def _offenders(folder: str, forbidden: set[str]) -> list[str]:
    return [
        f"{module}: {name}"
        for module, names in _imported_packages(REPO_ROOT / folder).items()
        for name in sorted(names & forbidden)
    ]


def test_imports_flow_bot_to_storage_to_protocol_and_trainer_to_protocol():
    """bot -> storage -> protocol <- trainer: the processes share the protocol and nothing else."""
    assert _offenders("trainer", {"bot", "storage"}) == []
    assert _offenders("bot", {"trainer"}) == []
    assert _offenders("storage", {"bot", "trainer"}) == []


def test_the_protocol_is_stdlib_only():
    allowed = set(sys.stdlib_module_names) | {"__future__", "protocol"}
    offenders = [
        f"{module}: {name}"
        for module, names in _imported_packages(REPO_ROOT / "protocol").items()
        for name in sorted(names - allowed)
    ]
    assert offenders == []


def test_discord_and_the_terminal_share_only_bot_jobs():
    """What both front ends show is written once in bot/jobs/ (summaries, results): Discord never imports
    the command line."""
    discord_imports = [
        f"{path}: {node.module}"
        for path in sorted((REPO_ROOT / "bot" / "discord_bot").rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bot.cli")
    ]
    assert discord_imports == []
