"""The blocking upload of a publish, run in a worker thread once bot/hub/destination.py settled the repo: the
adapter files, the tokenizer, the card and the chart in one commit. It only ever reads the adapter folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.hub.model_card import is_hub_id

TRL_CARD = "README.md"  # trl's own card, rewritten at every save: replaced by ours


@dataclass(frozen=True)
class Published:
    repo_id: str
    url: str
    commit: str


def base_model_license(api: Any, base_model: str) -> str | None:
    """The license the base model's own card declares, if it declares one (a local base: its README.md).

    A card without it is not an error: the published card then names no license.
    """
    from huggingface_hub import ModelCard
    from huggingface_hub.errors import HfHubHTTPError

    try:
        if not is_hub_id(base_model):
            readme = Path(base_model).expanduser() / "README.md"
            license_name = ModelCard.load(readme).data.license if readme.is_file() else None
        else:
            info = api.model_info(base_model)
            license_name = info.card_data.license if info.card_data is not None else None
    except (HfHubHTTPError, OSError, ValueError):  # a gated, missing or unreachable base: no license line
        return None
    return license_name if isinstance(license_name, str) and license_name else None


def adapter_files(folder: Path, replaced: Mapping[str, Path]) -> dict[str, Path]:
    """Every regular file of the adapter folder, by its path in the repo, minus the ones we replace."""
    found = {}
    for path in sorted(folder.rglob("*")):
        relative = path.relative_to(folder).as_posix()
        if path.is_symlink() or not path.is_file() or any(p.startswith(".") for p in relative.split("/")):
            continue  # nothing hidden, and no link that could point outside the folder
        if relative == TRL_CARD or relative in replaced:
            continue
        found[relative] = path
    return found


def commit_adapter(
    api: Any, repo_id: str, url: str, folder: Path, staged: Mapping[str, Path], *, message: str
) -> Published:
    """One commit: the adapter folder's files, then the `staged` ones that replace or join them, the card
    last (trl's README.md never wins). The repo exists already and is ours (bot/hub/destination.py)."""
    from huggingface_hub import CommitOperationAdd

    files = adapter_files(folder, staged)
    ordered = sorted(staged.items(), key=lambda item: item[0] == TRL_CARD)  # README.md last
    operations = [
        CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path))
        for name, path in [*files.items(), *ordered]
    ]
    info = api.create_commit(repo_id, operations=operations, commit_message=message, repo_type="model")
    return Published(repo_id=repo_id, url=url, commit=str(info.oid))
