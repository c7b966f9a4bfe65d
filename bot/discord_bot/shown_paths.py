"""What Discord may show of a text that names files (a worker's error, a hint, a log line, a base model
folder, a refusal): a job's files by their names in its folder, and never an absolute path on the bot's
machine. The terminal shows the same texts unchanged; this is applied where Discord renders them.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

# An absolute path of at least two parts (so `/finetune` and `/push id:3` stay as they are), not inside a
# URL or a word: "https://host/a/b" and "r/w" are left alone.
_ABSOLUTE = re.compile(r"(?<![\w.:/~-])~?/(?:[^\s/'\"`<>()\[\]{},;:]+/)+[^\s/'\"`<>()\[\]{},;:]*")


def without_paths(text: str, job_dir: str | None = None) -> str:
    """`text` with the files of the job folder `job_dir` named relative to it ("upload/dataset.jsonl"),
    the folder itself as "the job folder", and any other absolute path by its last part."""
    if job_dir:
        folder = job_dir.rstrip("/")
        text = text.replace(folder + "/", "").replace(folder, "the job folder")
    return _ABSOLUTE.sub(_last_part, text)


def _last_part(match: re.Match[str]) -> str:
    return PurePosixPath(match.group(0).rstrip("/")).name or "a folder"


def without_data_dir(text: str, data_dir: Path) -> str:
    """A refusal of the bot's own with the data directory's files named relative to it ("jobs/3"): unlike
    without_paths it keeps other paths, such as the one a person typed and is told is refused."""
    folders = {str(data_dir).rstrip("/"), str(data_dir.absolute()), str(data_dir.resolve())} - {"", "."}
    for folder in sorted(folders, key=len, reverse=True):  # the longer first: one may contain the other
        text = text.replace(folder + "/", "").replace(folder, "the data directory")
    return text
