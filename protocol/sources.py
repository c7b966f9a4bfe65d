"""What a name for a dataset or a model is (a Hub id, a URL or a path), decided in one place, and how a
URL may be shown."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path
from typing import Literal

# The data files a dataset may be: a name ending so names a file, never a Hub id.
DATASET_SUFFIXES: tuple[str, ...] = (".jsonl", ".json", ".csv", ".parquet", ".txt")

SourceKind = Literal["hub", "url", "path"]

_PATH_STARTS = ("/", "./", "../", "~", ".\\", "..\\")


def source_kind(name: str, *, existing_paths: bool = False) -> SourceKind:
    """A URL when it has a scheme; a path when it is written like one (absolute, ./ ../ ~, a backslash or a
    data file's suffix); else a Hub id, whether or not it is a valid one (hub_id_problem says).

    `existing_paths`: the name was given on this machine's own terminal, so a file or folder that exists
    under that name is meant (a model folder `models/tiny`). Never for names from Discord: whether a path
    exists on the bot's host is not for a channel to find out."""
    if "://" in name:
        return "url"
    if name.startswith(_PATH_STARTS) or "\\" in name or Path(name).suffix.lower() in DATASET_SUFFIXES:
        return "path"
    if existing_paths and Path(name).expanduser().exists():
        return "path"
    return "hub"


_HUB_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")


def hub_id_problem(name: str, *, owner_required: bool = False, what: str = "dataset") -> str | None:
    """What makes `name` no Hub repo id ([owner/]name as the Hub spells them), or None; text only, it never
    looks at the filesystem (a path and an existing folder are both simply not ids)."""
    parts = name.split("/")
    if (
        len(name) > 96
        or len(parts) > 2
        or (owner_required and len(parts) != 2)
        or not all(_HUB_NAME.fullmatch(part) for part in parts)
        or "--" in name
        or ".." in name
        or name.endswith(".git")
    ):
        shape = "owner/name" if owner_required else "owner/name (or a bare name)"
        return f"{name!r} is not a Hub {what} id: write it as {shape}, letters, digits, '-', '_' and '.' only"
    return None


# A name or an IPv4 address, or an IPv6 one (two colons at least) with or without its brackets.
_BARE_HOST = re.compile(r"[A-Za-z0-9._-]+|\[?[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*\]?")
_URL_USERINFO = re.compile(r"^([^:/?#]+://)[^/?#]*@")


def is_bare_host(host: str) -> bool:
    """A host as written in a URL, without scheme, user or port (limits.allowed_url_hosts)."""
    return bool(_BARE_HOST.fullmatch(host))


def redact_url(url: str) -> str:
    """A URL as it may be shown (messages, the job's display, logs): scheme, host, port and path. Its
    user:password, query and fragment never are: signed download links carry their credentials there.
    Text that is not a URL (a Hub id, a path) is returned as it is."""
    if "://" not in url:
        return url
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port is not None else ""
    except ValueError:  # an unclosed [ or a bad port: cut what may hold a secret as text
        return _URL_USERINFO.sub(r"\1", re.split(r"[?#]", url, maxsplit=1)[0])
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal keeps its brackets, or the port would read as part of it
    return f"{parts.scheme}://{host}{port}{parts.path}"
