"""The handle a test gets for one interaction it sent: the bot's callbacks, original response and
followups as they arrive, and waits for them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tests.fake_discord.models import FLAG_EPHEMERAL, FakeMessage

if TYPE_CHECKING:
    from tests.fake_discord.server import FakeDiscord


@dataclass
class FakeInteraction:
    """One interaction the test sent, and everything the bot answered through it."""

    id: int
    token: str
    type: int  # 2 command, 3 component, 4 autocomplete
    name: str  # command name, or the clicked custom_id
    user_id: int
    channel_id: int
    payload: dict[str, Any]
    created: float  # loop time, for the 3 s acknowledgement deadline
    fake: FakeDiscord = field(repr=False)
    message_id: int | None = None  # the message whose component was clicked
    responses: list[dict[str, Any]] = field(default_factory=list)
    original: FakeMessage | None = None
    followups: list[FakeMessage] = field(default_factory=list)

    @property
    def response(self) -> dict[str, Any] | None:
        return self.responses[0] if self.responses else None

    @property
    def response_type(self) -> int | None:
        return self.response["type"] if self.response else None

    @property
    def ephemeral(self) -> bool:
        """Whether the first response was flagged ephemeral (flags & 64)."""
        data = (self.response or {}).get("data") or {}
        return bool(int(data.get("flags", 0) or 0) & FLAG_EPHEMERAL)

    @property
    def choices(self) -> list[dict[str, Any]] | None:
        """Autocomplete choices (response type 8), or None."""
        if self.response_type != 8:
            return None
        return (self.response or {}).get("data", {}).get("choices", [])

    async def wait_response(self, timeout: float = 5.0) -> dict[str, Any]:
        """The first callback the bot sent ({"type": ..., "data": ...})."""
        return await self.fake.wait_for(lambda: self.response, timeout, what=f"a response to {self.name!r}")

    async def wait_original(self, timeout: float = 5.0, *, loaded: bool = True) -> FakeMessage:
        """The original response message; with loaded=True, once it is no longer "thinking"."""

        def ready() -> FakeMessage | None:
            msg = self.original
            return msg if msg is not None and not (loaded and msg.loading) else None

        return await self.fake.wait_for(ready, timeout, what=f"the original response to {self.name!r}")

    async def wait_followups(self, count: int = 1, timeout: float = 5.0) -> list[FakeMessage]:
        return await self.fake.wait_for(
            lambda: self.followups if len(self.followups) >= count else None,
            timeout,
            what=f"{count} followup(s) to {self.name!r}",
        )
