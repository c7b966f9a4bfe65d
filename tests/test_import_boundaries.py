"""The bot process stays light (no torch stack), and imports flow one way (STYLE.md rule 1)."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import bot

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "peft", "bitsandbytes", "trl", "datasets", "accelerate")


def test_the_bot_process_never_imports_the_training_stack():
    found = pkgutil.walk_packages(bot.__path__, prefix="bot.")  # recurses into bot.jobs, bot.discord_bot
    modules = sorted(info.name for info in found if not info.name.endswith("__main__"))
    assert {"bot.jobs.service", "bot.discord_bot.client", "bot.discord_bot.cogs.finetune"} <= set(modules)
    modules += ["trainer.protocol", "trainer.dataclass_codec", "storage.store"]
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert result.stdout.strip() == "[]", f"imported by the bot process: {result.stdout}"


def test_trainer_never_imports_bot_or_storage():
    offenders = []
    for path in (REPO_ROOT / "trainer").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [
                f"{path.name}: {name}" for name in names if name.split(".")[0] in ("bot", "storage")
            ]
    assert offenders == []


def test_the_protocol_module_is_stdlib_only():
    tree = ast.parse((REPO_ROOT / "trainer" / "protocol.py").read_text())
    imported = {
        (node.module or "").split(".")[0] if isinstance(node, ast.ImportFrom) else alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in node.names
    }
    assert imported <= set(sys.stdlib_module_names) | {"__future__", "trainer"}
