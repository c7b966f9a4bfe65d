"""The outbox end to end: the real discord.py client against the fake Discord (which fails, rate-limits
and remembers nonces as Discord does), real SQLite, the fake trainer; restarts are new bot processes
on the same data directory."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from storage.outbox import Outbox
from storage.store import Store
from tests.discord_helpers import (
    OUTBOX_BACKOFF_S,
    bot_config,
    embed_field,
    fake_dataset,
    quick_5xx_retries,
    running_bot,
)
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture
from tests.service_helpers import wait_until

FAKE_MODEL = "fake/model"
ENDS = "steps=30;step_s=0.05"  # runs about 1.5 s: long enough to break Discord before it ends


async def _finetune(fake, behaviour: str = ENDS) -> None:
    call = await fake.slash("finetune", {"base_model": FAKE_MODEL}, attachments=[fake_dataset(behaviour)])
    await call.wait_followups(1, timeout=15)


def _completions(fake, job_id: int = 1):
    return [m for m in fake.channel_messages() if m.content.endswith(f"job {job_id} (data) succeeded")]


def _posts(fake):
    return fake.requests_to("POST", rf"/channels/{fake.channel_id}/messages")


async def _status_posted(fake):
    """Wait for the job's status message (the outbox posts it just after the job was queued)."""
    return await fake.wait_for(lambda: next((m for m in fake.channel_messages() if m.embeds), None))


async def _entry(service, kind: str, job_id: int = 1):
    return next((entry for entry in await service.store.outbox.entries(job_id) if entry.kind == kind), None)


async def _delivered(service, kind: str, job_id: int = 1):
    async def check():
        entry = await _entry(service, kind, job_id)
        return entry if entry is not None and entry.state == "delivered" else None

    return await wait_until(check, timeout=20)


async def test_five_500s_on_the_completion_do_not_lose_it(fake_discord, tmp_path, monkeypatch, caplog):
    fake = fake_discord
    quick_5xx_retries(monkeypatch)  # discord.py's own five tries of a 500 take 25 s otherwise
    async with running_bot(fake, bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake)
        await _status_posted(fake)
        # Twelve 500s: discord.py gives up twice (five tries each), the outbox tries a third time.
        fake.fail_route("POST", rf"/channels/{fake.channel_id}/messages", status=500, count=12)
        completion = await _delivered(service, "completion")
        await asyncio.sleep(4 * OUTBOX_BACKOFF_S)  # room for a duplicate to show up
        assert [m.id for m in _completions(fake)] == [completion.message_id]
        assert fake.messages_mentioning(fake.user.id) == _completions(fake)
        assert [status for method, _path, status in fake.faults.injected if method == "POST"] == [500] * 12
        retried = [r for r in caplog.records if "the completion message not delivered" in r.getMessage()]
        assert len(retried) == 2 and all("job 1" in r.getMessage() for r in retried)
        assert (await service.get(1)).state == "succeeded"


async def test_a_429_s_retry_after_is_waited_out(fake_discord, tmp_path):
    fake = fake_discord
    async with running_bot(fake, bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake)
        await _status_posted(fake)
        # Cloudflare's 429 (no Via header): discord.py raises at once, and Retry-After says how long.
        fake.fail_route("POST", rf"/channels/{fake.channel_id}/messages", status=429, retry_after=1.0)
        await _delivered(service, "completion")
        refused, retried = _posts(fake)[-2:]
        assert (refused.status, retried.status) == (429, 200)
        assert retried.at - refused.at >= 0.95  # not after the outbox's own 0.05 s backoff
        assert len(_completions(fake)) == 1


async def _ends_without_being_marked(fake, config, monkeypatch):
    """A first bot process posts the completion and dies before it records that it did."""
    dying = {"now": True}
    mark_posted = Outbox.mark_posted

    async def dies_before_marking(self, entry, message_id, **marks):
        if dying["now"] and entry.kind == "completion":
            await asyncio.Event().wait()  # the process is gone: the message is in Discord, its row not
        return await mark_posted(self, entry, message_id, **marks)

    monkeypatch.setattr(Outbox, "mark_posted", dies_before_marking)
    async with running_bot(fake, config) as (_bot, service):
        await _finetune(fake)
        await fake.wait_for(lambda: _completions(fake), timeout=20)
        entry = await _entry(service, "completion")
        assert entry.state == "pending" and entry.first_sent_at is not None
    dying["now"] = False
    return entry


@pytest.mark.parametrize("window", ["within the nonce window", "beyond the nonce window"])
async def test_a_restarted_bot_does_not_post_the_completion_twice(
    fake_discord, tmp_path, monkeypatch, window
):
    fake = fake_discord
    beyond = window == "beyond the nonce window"
    if beyond:  # Discord forgot the nonce, and the bot knows the window is over: it must look
        fake.nonce_window_s = 0.0
    discord_settings = {"outbox_nonce_window_s": 0.0} if beyond else {}
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,), discord=discord_settings)
    unmarked = await _ends_without_being_marked(fake, config, monkeypatch)
    [posted] = _completions(fake)
    history_reads = len(fake.requests_to("GET", rf"/channels/{fake.channel_id}/messages"))
    async with running_bot(fake, config) as (_bot, service):
        delivered = await _delivered(service, "completion")
        await asyncio.sleep(4 * OUTBOX_BACKOFF_S)
        assert [m.id for m in _completions(fake)] == [posted.id] == [delivered.message_id]
        assert (await service.get(1)).completion_message_id == posted.id
    with_nonce = [r for r in _posts(fake) if (r.body or {}).get("nonce") == unmarked.nonce]
    reads = len(fake.requests_to("GET", rf"/channels/{fake.channel_id}/messages")) - history_reads
    if beyond:
        assert len(with_nonce) == 1 and reads == 1  # found in the history, not posted again
    else:
        assert len(with_nonce) == 2 and reads == 0  # re-sent; Discord returned the first message


async def test_a_permanent_error_gives_up_at_once_and_job_shows_it(fake_discord, tmp_path, caplog):
    fake = fake_discord
    fake.fail_route("POST", rf"/channels/{fake.channel_id}/messages", status=403, count=100, code=50013)
    async with running_bot(fake, bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake, "steps=4")

        async def both_failed():
            entries = await service.store.outbox.entries(1)
            return len(entries) == 2 and all(entry.state == "failed" for entry in entries) and entries

        status, completion = await wait_until(both_failed, timeout=20)
        await asyncio.sleep(4 * OUTBOX_BACKOFF_S)  # no second try comes
        assert len(_posts(fake)) == 2 and fake.channel_messages() == []
        assert (completion.error, completion.error_code) == ("Missing Permissions (50013)", 50013)
        assert (status.error, status.error_code) == ("Missing Permissions (50013)", 50013)
        job = await service.get(1)
        assert job.state == "succeeded" and job.adapter_path  # the job never noticed
        gave_up = [r for r in caplog.records if r.levelno == logging.WARNING and "gave up" in r.getMessage()]
        assert len(gave_up) == 2
        assert all("job 1" in r.getMessage() and "50013" in r.getMessage() for r in gave_up)

        call = await fake.slash("job", {"id": 1})
        [answer] = await call.wait_followups(1)
        assert embed_field(answer, "State") == "succeeded"
        assert embed_field(answer, "Discord") == (
            "could not post the status message: Missing Permissions (50013)\n"
            "could not post the completion message: Missing Permissions (50013)"
        )


async def test_pending_messages_survive_a_restart(fake_discord, tmp_path, monkeypatch):
    fake = fake_discord
    quick_5xx_retries(monkeypatch)
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config) as (_bot, service):
        await _finetune(fake)
        await _status_posted(fake)
        fake.fail_route("POST", rf"/channels/{fake.channel_id}/messages", status=500, count=10_000)  # down

        async def tried():
            entries = [e for e in await service.store.outbox.entries(1) if e.kind == "completion"]
            return entries and entries[0].tries >= 2 and entries[0]

        pending = await wait_until(tried, timeout=20)
        assert pending.state == "pending" and (await service.get(1)).state == "succeeded"
    assert _completions(fake) == []
    fake.faults.clear_route_faults()  # Discord is back; so is the bot
    async with running_bot(fake, config) as (_bot, service):
        delivered = await _delivered(service, "completion")
        await asyncio.sleep(4 * OUTBOX_BACKOFF_S)
        assert [m.id for m in _completions(fake)] == [delivered.message_id]
        assert fake.messages_mentioning(fake.user.id) == _completions(fake)


async def test_the_final_status_is_written_once_and_never_twice_the_same(fake_discord, tmp_path):
    fake = fake_discord
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config) as (_bot, service):
        await _finetune(fake, "steps=40;step_s=0.02")
        status = await _status_posted(fake)
        await wait_until(lambda: _ended(service))
        final = await _delivered(service, "status")
        await service.store.set_hub_state(1, "none")  # a change that shows nothing new
        await wait_until(lambda: _caught_up(service))
    async with await Store.open(config.database_path()) as store:  # while the bot is down
        await store.set_hub_state(1, "none")
    async with running_bot(fake, config) as (_bot, service):
        await wait_until(lambda: _caught_up(service))
    assert (embed_field(status, "State"), embed_field(status, "Step")) == ("succeeded", "40/40")
    assert status.components == []  # no Cancel button once the job ended
    patches = fake.requests_to("PATCH", rf"/channels/{fake.channel_id}/messages/{status.id}")
    bodies = [json.dumps(patch.body, sort_keys=True) for patch in patches]
    assert patches and len(set(bodies)) == len(bodies)
    assert final.delivered_hash == (await _entry_after(config)).delivered_hash


async def test_a_change_while_an_edit_is_on_its_way_is_written_after_it(fake_discord, tmp_path):
    fake = fake_discord
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config) as (_bot, service):
        fake.faults.slow_route("PATCH", rf"/channels/{fake.channel_id}/messages/\d+", 2.0)
        await _finetune(fake, "steps=25;step_s=0.04")  # ends while the first edit is on its way
        status = await _status_posted(fake)
        await wait_until(lambda: _ended(service))
        await wait_until(lambda: _caught_up(service), timeout=20)
    patches = fake.requests_to("PATCH", rf"/channels/{fake.channel_id}/messages/{status.id}")
    shown = [_field(patch.body, "State") for patch in patches]
    assert shown[0].startswith("running") and shown[-1] == "succeeded", shown
    assert embed_field(status, "State") == "succeeded"


def _field(body, name: str) -> str | None:
    return next((f["value"] for f in body["embeds"][0]["fields"] if f["name"] == name), None)


async def _ended(service):
    job = await service.get(1)
    return job if job.is_terminal else None


async def _caught_up(service):
    entry = await _entry(service, "status")
    return entry.state == "delivered" and entry.delivered_revision == entry.revision


async def _entry_after(config):
    async with await Store.open(config.database_path()) as store:
        return next(e for e in await store.outbox.entries(1) if e.kind == "status")
