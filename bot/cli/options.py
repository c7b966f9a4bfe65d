"""What every `qlora-bot` command accepts, before or after its name, and the version it reports."""

from __future__ import annotations

import argparse
from importlib import metadata
from pathlib import Path
from typing import Any

PACKAGE = "qlora-bot"


def add_common_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    """--config and -v. The top-level parser keeps real defaults; each command's copy passes
    argparse.SUPPRESS, so `qlora-bot --config c.toml jobs` is not undone by the command's own default
    (and one given after the command wins over one before it)."""
    parser.add_argument(
        "--config",
        type=Path,
        default=default,
        help="config file (default: ./config.toml when present, else the built-in defaults)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=False if default is None else default,
        help="log debug messages",
    )


def package_version() -> str:
    """The installed distribution's version; a source checkout that was never installed says so."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "(version unknown: not installed; pip install -e . records it)"
