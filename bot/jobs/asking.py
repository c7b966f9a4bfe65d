"""One ask, the same from Discord and the terminal: find the adapter, turn the options into a request, stream
the serve worker's answer and accumulate it for the front end to render."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bot.config import Config, ServeConfig
from bot.hub.access import HubAccess
from bot.hub.download import download_adapter
from bot.hub.model_card import is_hub_id
from bot.jobs.adapter_names import known_names, stored_adapter
from bot.jobs.requests import Requester
from bot.jobs.specs import local_model_path
from bot.workers.serve_socket import SharedServeClient
from bot.workers.serve_worker import ServeClient, Waiting
from protocol.errors import ProtocolError, UserError
from protocol.job_folder import ADAPTER_CONFIG, AdapterRecord, library_json, read_record
from protocol.serve import Failed, Finished, Generate, Loading, Token
from protocol.sources import hub_id_problem, source_kind
from storage.store import Store


@dataclass(frozen=True)
class ResolvedAdapter:
    label: str  # what people call it: its name, or the folder
    path: str
    base_model: str
    prompt_style: str  # "chat": send the prompt as a user turn; "raw": as plain text


async def resolve_adapter(
    store: Store,
    reference: str,
    base_model: str | None = None,
    *,
    hub: HubAccess | None = None,
    folders: bool = True,
    allowed_base_models: Sequence[str] | None = None,
) -> ResolvedAdapter:
    """An adapter by name, job id or job name (from the store: bot/jobs/adapter_names.py), by folder (only
    with `folders`: the terminal's user may name one, Discord never), or (with `hub`) by Hub id, downloaded
    into the Hub cache; `base_model` overrides the recorded one. With `allowed_base_models`, the adapter's
    base model must be one of them. Stored names come first: `./NAME` means a folder called NAME."""
    stored = await stored_adapter(store, reference)
    if stored is not None:
        folder = Path(stored.path)
        label, recorded_base = stored.name, stored.base_model
    elif folders and Path(reference).expanduser().is_dir():
        folder = Path(reference).expanduser().resolve()
        if not (folder / ADAPTER_CONFIG).is_file():
            raise UserError(
                f"{folder} holds no adapter (no {ADAPTER_CONFIG})",
                "pass the folder a job saved its adapter in",
            )
        label, recorded_base = str(folder), _recorded_base_model(folder, str(folder))
    elif folders and _meant_as_folder(reference):
        path = Path(reference).expanduser()
        what = "not a folder" if path.exists() else "no such folder"
        raise UserError(
            f"{what}: {reference}", "pass the folder an adapter is in (it holds adapter_config.json)"
        )
    elif hub is not None and _is_hub_reference(reference, folders):
        folder = await download_adapter(hub, reference)
        label, recorded_base = reference, _recorded_base_model(folder, reference)
    elif folders:
        known = await known_names(store)
        listed = (
            f"adapters here: {known} (`qlora-bot adapters` lists them all)"
            if known
            else "no job has finished an adapter here yet (`qlora-bot train` makes one)"
        )
        raise UserError(
            f"there is no adapter named {reference!r}",
            f"{listed}; or pass a job id, the adapter's folder, or a Hub id (owner/name)",
        )
    else:
        # The same answer for every other name, whatever exists on the bot's machine.
        raise UserError(
            f"there is no adapter named {reference!r}",
            "list adapters with /adapters, or give a Hub adapter id (owner/name)",
        )
    if not folder.is_dir():
        gone = f" ({folder})" if folders else ""  # Discord never shows where the bot keeps its files
        raise UserError(f"the files of adapter {label} are gone{gone}", "train it again")
    base = base_model or recorded_base
    if not base:
        raise UserError(f"adapter {label} does not say which base model it needs", "pass --base-model")
    if allowed_base_models is not None and not _allowed(base, allowed_base_models):
        raise UserError(
            f"adapter {label} needs base model {base}, which is not on the allowed list (limits.base_models)",
            "ask an adapter of an allowed base model, or ask an admin",
        )
    record = _record(folder, label)
    prompt_style = record.prompt_style if record is not None else "chat"
    return ResolvedAdapter(label=label, path=str(folder), base_model=base, prompt_style=prompt_style)


def _meant_as_folder(reference: str) -> bool:
    """Written as a path (/x, ./x, ~/x, x.json...), or with slashes that no Hub id has (runs/a/b): a folder
    that is not there, not a name to look up elsewhere. owner/name stays a Hub id."""
    if source_kind(reference) == "path":
        return True
    return "/" in reference and hub_id_problem(reference, owner_required=True, what="adapter") is not None


def _is_hub_reference(reference: str, folders: bool) -> bool:
    if folders:  # the terminal: an existing folder of that name was meant as a folder (see above)
        return is_hub_id(reference)
    return hub_id_problem(reference, owner_required=True, what="adapter") is None


def _allowed(base: str, allowed: Sequence[str]) -> bool:
    """On the list as written, or as the folder a listed local path names (jobs record folders absolute)."""
    return base in allowed or base in {local_model_path(name) for name in allowed}


@dataclass(frozen=True)
class Question:
    """One ask as a person wrote it."""

    prompt: str
    adapter: str  # a name, a job id, a Hub id, or (on_this_machine only) a folder
    base_model: str | None = None  # instead of the one the adapter records
    compare: bool = False  # also answer with the base model alone
    max_new_tokens: int | None = None
    temperature: float = 0.0
    seed: int | None = None


class Answering:
    """One ask under way. `events()` streams the serve worker's events (and Waiting), each applied to
    `texts` and `finished` before it is yielded; a Failed event is the last."""

    def __init__(
        self, adapter: ResolvedAdapter, request: Generate, client: ServeClient | SharedServeClient
    ) -> None:
        self.adapter = adapter
        self.request = request
        self.client = client
        self.texts = {"adapter": "", "base": ""}  # each variant's answer so far, whole once it finished
        self.finished: dict[str, Finished] = {}

    async def events(self) -> AsyncIterator[Token | Finished | Loading | Waiting | Failed]:
        async for event in self.client.generate(self.request):
            if isinstance(event, Token):
                self.texts[event.variant] += event.text
            elif isinstance(event, Finished):
                self.finished[event.variant] = event
                self.texts[event.variant] = event.text
            yield event
            if isinstance(event, Failed):
                return


async def start_ask(
    store: Store,
    hub: HubAccess,
    config: Config,
    question: Question,
    requester: Requester,
    client: ServeClient | SharedServeClient,  # the bot's own worker, or a shared one (serve_socket.py)
) -> Answering:
    """Resolve the adapter and check the options for `requester`: folders only on this machine's terminal,
    and (but for admins) only adapters of the base models /finetune allows."""
    adapter = await resolve_adapter(
        store,
        question.adapter,
        question.base_model,
        hub=hub,
        folders=requester.on_this_machine,
        allowed_base_models=None if requester.is_admin else config.limits.base_models,
    )
    request = build_request(
        adapter,
        question.prompt,
        config.serve,
        compare=question.compare,
        max_new_tokens=question.max_new_tokens,
        temperature=question.temperature,
        seed=question.seed,
    )
    return Answering(adapter, request, client)


def build_request(
    adapter: ResolvedAdapter,
    prompt: str,
    config: ServeConfig,
    *,
    compare: bool = False,
    max_new_tokens: int | None = None,
    temperature: float = 0.0,
    seed: int | None = None,
) -> Generate:
    if not prompt.strip():
        raise UserError("the prompt is empty", "write a question or an instruction")
    tokens = max_new_tokens or config.default_max_new_tokens
    if not 1 <= tokens <= config.max_new_tokens_limit:
        raise UserError(
            f"max_new_tokens={tokens} is outside 1..{config.max_new_tokens_limit} "
            "(serve.max_new_tokens_limit)",
            f"use {config.max_new_tokens_limit} or less",
        )
    if not 0.0 <= temperature <= 2.0:
        raise UserError(f"temperature={temperature:g} is outside 0..2", "0 answers greedily; 0.7 is typical")
    chat = adapter.prompt_style == "chat"
    return Generate(
        id=uuid.uuid4().hex[:12],
        base_model=adapter.base_model,
        adapter=adapter.path,
        messages=({"role": "user", "content": prompt},) if chat else None,
        prompt=None if chat else prompt,
        max_new_tokens=tokens,
        temperature=temperature,
        seed=seed,
        compare=compare,
        timeout_s=config.request_timeout_s,
    )


def _record(folder: Path, label: str) -> AdapterRecord | None:
    """The adapter's record; None for a peft adapter made elsewhere (it has none)."""
    try:
        return read_record(folder)
    except ProtocolError as error:
        raise UserError(
            f"adapter {label} has an adapter record qlora-bot cannot read ({error})", "train it again"
        ) from None


def _recorded_base_model(folder: Path, label: str) -> str | None:
    record = _record(folder, label)
    if record is not None and record.spec.base_model:
        return record.spec.base_model
    # A peft adapter made elsewhere names its base in its own config.
    base = library_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path")
    return base if isinstance(base, str) else None
