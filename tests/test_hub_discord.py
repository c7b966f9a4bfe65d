"""Publishing from Discord: the real discord.py client against the fake Discord, the real huggingface_hub
against the fake Hub, the fake trainer for speed."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import pytest

from bot.logging_setup import setup_logging
from bot.workers.serve_worker import ServeClient
from tests.discord_helpers import bot_config, embed_field, fake_dataset, running_bot
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture
from tests.fakes.fake_trainer import write_adapter
from tests.hub_helpers import (
    BAD_TOKEN,
    access,
    fake_hub_fixture,  # noqa: F401 - the fake_hub fixture
    folder_files,
    open_publisher,
    sha256,
)
from tests.service_helpers import FAKES, fake_spec, wait_until
from tests.worker_helpers import worker_env

FAKE_MODEL = "fake/model"
HUB_FIELD = "Hugging Face Hub"


async def _finetune(fake, **options):
    call = await fake.slash(
        "finetune", {"base_model": FAKE_MODEL, **options}, attachments=[fake_dataset("steps=4")]
    )
    await call.wait_followups(1, timeout=15)


async def _completion(fake):
    [message] = await fake.wait_for(lambda: fake.messages_mentioning(fake.user.id), timeout=30)
    return message


async def test_the_completion_message_carries_the_hub_link(fake_discord, fake_hub, tmp_path):
    fake = fake_discord
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config, hub=access(tmp_path)) as (_bot, service):
        await _finetune(fake, push=True, private=False)
        completion = await _completion(fake)
        job = await service.get(1)
    url = f"{fake_hub.url}/alice/data-1"
    assert completion.content.endswith("job 1 (data) succeeded")
    assert embed_field(completion, HUB_FIELD) == url == job.hub_url  # posted after the publish ended
    assert not fake_hub.repos["alice/data-1"].private  # public, as asked


@pytest.fixture
def log_file(tmp_path):
    """The bot's log file, set up as `qlora-bot run` does (with the token masked); restored after."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    path = setup_logging(tmp_path / "logs", [BAD_TOKEN], verbose=True)
    yield path
    for handler in root.handlers:
        handler.close()
    root.handlers[:], root.level = saved[0], saved[1]


async def test_a_401_ends_push_failed_and_the_token_shows_nowhere(fake_discord, fake_hub, tmp_path, log_file):
    fake = fake_discord
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config, hub=access(tmp_path, token=BAD_TOKEN)) as (_bot, service):
        await _finetune(fake, push=True)
        completion = await _completion(fake)
        job = await service.get(1)
        await fake.wait_for(lambda: HUB_FIELD in json.dumps(_status(fake).embeds), timeout=10)
    assert job.hub_state == "push_failed"
    assert "HTTP 401" in job.hub_error and "check HF_TOKEN has write access" in job.hub_error
    assert "check HF_TOKEN has write access" in embed_field(completion, HUB_FIELD)
    assert "/push id:1" in embed_field(completion, HUB_FIELD)
    shown = [
        json.dumps(dataclasses.asdict(v), default=str) for m in fake.messages.values() for v in m.versions
    ]
    assert shown and not any(BAD_TOKEN in text for text in shown)
    assert BAD_TOKEN not in job.hub_error
    for handler in logging.getLogger().handlers:
        handler.flush()
    log_text = log_file.read_text()
    assert "publishing job 1 failed" in log_text and BAD_TOKEN not in log_text


async def test_a_persistent_5xx_keeps_the_adapter_and_push_publishes_it_later(
    fake_discord, fake_hub, tmp_path
):
    fake = fake_discord
    fake_hub.fail("POST", r"/commit/", status=503, times=None)
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config, hub=access(tmp_path)) as (_bot, service):
        await _finetune(fake, push=True)
        completion = await _completion(fake)
        job = await service.get(1)
        assert job.hub_state == "push_failed" and "HTTP 503 after 3 tries" in job.hub_error
        assert "not published" in embed_field(completion, HUB_FIELD)
        adapter = Path(job.adapter_path)
        local = folder_files(adapter)
        assert {"adapter_model.safetensors", "adapter_config.json", "qlora_bot.json"} <= set(local)

        fake_hub.clear_faults()  # the Hub is back
        call = await fake.slash("push", {"id": 1})
        [answer] = await call.wait_followups(1, timeout=30)
        assert call.ephemeral and answer.content == f"Job 1 is published: {fake_hub.url}/alice/data-1"
        job = await service.get(1)
    assert job.hub_state == "pushed" and job.hub_error is None
    repo = fake_hub.repos["alice/data-1"]
    assert repo.private  # the job's setting: private by default
    assert sha256(repo.files["adapter_model.safetensors"]) == sha256(local["adapter_model.safetensors"])
    assert folder_files(adapter) == local  # publishing only read the adapter


async def test_push_refuses_other_peoples_and_unfinished_jobs(fake_discord, fake_hub, tmp_path):
    fake = fake_discord
    stranger = fake.add_member(4242, "stranger")
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config, hub=access(tmp_path)) as (_bot, service):
        await _finetune(fake)  # push not asked (no HF_TOKEN default in this bot)
        await wait_until(lambda: _succeeded(service, 1))
        for user, expected in ((stranger, "job 1 is not yours"), (None, "there is no job 7")):
            call = await fake.slash("push", {"id": 7 if user is None else 1}, user=user)
            [answer] = await call.wait_followups(1)
            assert expected in answer.content
        assert fake_hub.repos == {}


async def test_push_elsewhere_is_refused_for_non_admins_before_any_hub_write(
    fake_discord, fake_hub, tmp_path
):
    fake = fake_discord
    theirs = fake_hub.add_repo("acme/their-repo", {"README.md": b"# acme's model\n", "w.bin": b"1"})
    before = (dict(theirs.files), list(theirs.commits))
    admin = fake.add_member(4343, "admin", admin=True)
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config, hub=access(tmp_path)) as (_bot, service):
        await _finetune(fake)  # by the default user, who is no admin; not published
        await wait_until(lambda: _succeeded(service, 1))
        call = await fake.slash("push", {"id": 1, "repo": "acme/their-repo"})
        [answer] = await call.wait_followups(1, timeout=30)
        assert "acme/their-repo is outside this bot's Hub namespace alice" in answer.content
        assert "only admins may publish elsewhere" in answer.content and "alice/NAME" in answer.content
        assert fake_hub.writes() == [] and (theirs.files, theirs.commits) == before
        assert (await service.get(1)).hub_state == "none"

        call = await fake.slash("push", {"id": 1, "repo": "acme/data-1"}, user=admin)  # an admin may
        [answer] = await call.wait_followups(1, timeout=30)
    assert answer.content == f"Job 1 is published: {fake_hub.url}/acme/data-1"
    assert fake_hub.repos["acme/data-1"].private and (theirs.files, theirs.commits) == before


async def test_push_refuses_a_repo_it_did_not_create_and_republishes_its_own_private_first(
    fake_discord, fake_hub, tmp_path
):
    fake = fake_discord
    theirs = fake_hub.add_repo("alice/existing", {"README.md": b"# my own model\n"})
    before = (dict(theirs.files), list(theirs.commits), theirs.private)
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config, hub=access(tmp_path)) as (_bot, service):
        await _finetune(fake, push=True)  # private, the default
        await _completion(fake)
        ours = fake_hub.repos["alice/data-1"]
        assert (await service.get(1)).hub_state == "pushed" and ours.private

        call = await fake.slash("push", {"id": 1, "repo": "alice/existing"})
        [answer] = await call.wait_followups(1, timeout=30)
        assert "alice/existing already exists and qlora-bot did not create it" in answer.content
        assert "choose another repo name" in answer.content
        assert (theirs.files, theirs.commits, theirs.private) == before

        ours.private = False  # someone made it public on the Hub since
        start = len(fake_hub.requests)
        call = await fake.slash("push", {"id": 1})  # the job asked for private
        [answer] = await call.wait_followups(1, timeout=30)
    assert answer.content == f"Job 1 is published: {fake_hub.url}/alice/data-1"
    assert ours.private and len(ours.commits) == 2
    later = [(r.method, r.path) for r in fake_hub.requests[start:]]
    change = later.index(("PUT", "/api/models/alice/data-1/settings"))
    assert change < min(i for i, (method, path) in enumerate(later) if "/preupload/" in path)


async def test_ask_accepts_a_hub_adapter_id(fake_discord, fake_hub, tmp_path):
    fake = fake_discord
    from bot.hub.publisher import PublishRequest

    folder = tmp_path / "made-elsewhere" / "adapter"
    write_adapter(folder, fake_spec(), seed=2.0)
    async with open_publisher(tmp_path, namespace="alice") as publisher:
        await publisher.publish(PublishRequest(folder, "shared", True))
    config = bot_config(tmp_path / "home", fake, base_models=(FAKE_MODEL,))
    config = dataclasses.replace(config, serve=dataclasses.replace(config.serve, stream_edit_interval_s=0.05))
    environ = {**worker_env(), "PYTHONPATH": f"{FAKES}:{worker_env()['PYTHONPATH']}"}
    client = ServeClient(config.serve, tmp_path / "serve.log", environ=environ, module="fake_serve")
    hub = access(tmp_path / "home")
    try:
        async with running_bot(fake, config, hub=hub, serve_client=client):
            call = await fake.slash("ask", {"prompt": "hi there", "adapter": "alice/shared"})
            original = await call.wait_original(timeout=30)
            await fake.wait_for(lambda: original.content == "echo: hi there ", timeout=30)
    finally:
        await client.close()
    [snapshot] = (tmp_path / "home" / "hub-cache").glob("models--alice--shared/snapshots/*")
    assert (snapshot / "adapter_model.safetensors").read_bytes() == (
        folder / "adapter_model.safetensors"
    ).read_bytes()


def _status(fake):
    return next(m for m in fake.channel_messages() if m.versions[0].components)


async def _succeeded(service, job_id: int):
    job = await service.get(job_id)
    return job if job.state == "succeeded" else None
