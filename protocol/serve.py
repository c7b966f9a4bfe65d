"""The serve worker's contract: generation requests on stdin and streamed events on stdout, JSON lines.

Like the training events (protocol/events.py), every line carries the version `v` and a `type`, and the
decoders refuse anything they do not know.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from protocol.json_lines import decode_line, encode_line

SERVE_PROTOCOL_VERSION = 1
# A shared worker stops by itself once idle (no ask in flight, no client); an ask that reaches it in that
# moment fails with this message, and a client that sees it may start a new worker and ask once more.
STOPPED_IDLE = "the serve worker stopped as idle just as this ask reached it"
Variant = Literal["adapter", "base"]


class ServeProtocolError(ValueError):
    """A line that does not follow the serve protocol."""


# --- requests (bot -> worker)


@dataclass(frozen=True)
class Generate:
    id: str
    base_model: str  # Hub id or local folder; loaded once in 4-bit and shared by its adapters
    adapter: str | None = None  # adapter folder; None asks the base model alone
    messages: tuple[dict[str, str], ...] | None = (
        None  # chat turns (role, content), formatted with the chat template
    )
    prompt: str | None = None  # raw text, used as is (adapters trained on plain text)
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 is greedy
    top_p: float = 1.0
    seed: int | None = None
    compare: bool = False  # also answer with the adapter disabled (the base model), same prompt
    timeout_s: float = 300.0


@dataclass(frozen=True)
class Cancel:
    id: str


@dataclass(frozen=True)
class Shutdown:
    pass


Request = Generate | Cancel | Shutdown
REQUEST_TYPES: dict[str, type] = {"generate": Generate, "cancel": Cancel, "shutdown": Shutdown}

# --- events (worker -> bot)


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class Loading:
    id: str
    what: Literal["base_model", "adapter"]
    name: str


@dataclass(frozen=True)
class Token:
    id: str
    variant: Variant
    text: str  # the newly decoded text (may be several tokens, or empty while a character is incomplete)


@dataclass(frozen=True)
class Finished:
    id: str
    variant: Variant
    text: str  # the whole answer
    tokens: int
    seconds: float
    time_to_first_token_s: float | None = None
    stop_reason: Literal["eos", "length", "cancelled"] = "eos"

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Failed:
    id: str
    kind: Literal["user_error", "oom", "internal", "cancelled", "timeout"]
    message: str
    hint: str = ""


@dataclass(frozen=True)
class Stats:
    """Answer to nothing: sent after each load/evict so the bot can show what is resident."""

    base_models: tuple[str, ...] = ()
    adapters: tuple[str, ...] = ()
    gpu_mem_gib: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


ServeEvent = Ready | Loading | Token | Finished | Failed | Stats
EVENT_TYPES: dict[str, type] = {
    "ready": Ready,
    "loading": Loading,
    "token": Token,
    "finished": Finished,
    "failed": Failed,
    "stats": Stats,
}
_NAMES = {cls: name for table in (REQUEST_TYPES, EVENT_TYPES) for name, cls in table.items()}


def encode(message: Request | ServeEvent) -> str:
    return encode_line(SERVE_PROTOCOL_VERSION, _NAMES[type(message)], message)


def decode_request(line: str | bytes) -> Request:
    return decode_line(
        line, version=SERVE_PROTOCOL_VERSION, types=REQUEST_TYPES, error=ServeProtocolError, noun="request"
    )


def decode_event(line: str | bytes) -> ServeEvent:
    return decode_line(
        line, version=SERVE_PROTOCOL_VERSION, types=EVENT_TYPES, error=ServeProtocolError, noun="event"
    )
