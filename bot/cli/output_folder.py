"""`train --output DIR`: a new or empty folder only. The worker writes the adapter, checkpoints and log
there, so an earlier job's folder (or any folder with files) would be overwritten or mixed into."""

from __future__ import annotations

from pathlib import Path

from protocol.job_folder import JobFolder

FIX = "choose a new --output or remove it"


def output_problems(path: Path) -> list[str]:
    """Why `path` cannot be a new job's folder; empty when it is free (absent, or an empty folder)."""
    if not path.exists():
        return []
    if not path.is_dir():
        return [f"--output: {path} is a file, not a folder ({FIX})"]
    found = _job_files(path)
    if found:
        return [f"--output: {path} already holds a job ({', '.join(found)}): {FIX}"]
    if any(path.iterdir()):
        return [f"--output: {path} is not empty; a job needs a folder of its own ({FIX})"]
    return []


def _job_files(path: Path) -> list[str]:
    """The parts of a job folder (protocol/job_folder.py) that lie in `path`."""
    folder = JobFolder(path)
    parts = (folder.adapter, folder.checkpoints, folder.log, folder.spec_file, folder.metrics)
    return [part.name + ("/" if part.is_dir() else "") for part in parts if part.exists()]
