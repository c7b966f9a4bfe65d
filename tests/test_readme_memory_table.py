"""The README's GPU memory table is what the memory plan predicts (bench/memory_table.py prints it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_the_readme_table_is_the_memory_plans():
    printed = subprocess.run(
        [sys.executable, str(REPO / "bench" / "memory_table.py")],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    table = [line for line in printed.splitlines() if line.startswith("|")]
    assert len(table) >= 7  # header, rule, and the model rows
    readme = (REPO / "README.md").read_text().splitlines()
    start = readme.index(table[0])
    assert readme[start : start + len(table)] == table  # rerun the script and paste its table when this fails
