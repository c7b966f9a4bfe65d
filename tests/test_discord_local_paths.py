"""What Discord may name and see, through the real discord.py client against the fake Discord: /finetune
takes a Hub id, an https URL or an attachment and never a path on the bot's machine; /ask takes adapter
names and Hub ids and obeys the base-model allow-list; no message shows an absolute server path."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from bot.workers.serve_worker import ServeClient
from tests.discord_helpers import bot_config, fake_dataset, running_bot
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture
from tests.fakes.fake_trainer import write_adapter
from tests.hub_helpers import access, fake_hub_fixture, folder_files  # noqa: F401 - the fake_hub fixture
from tests.service_helpers import FAKES, fake_spec, wait_until
from tests.worker_helpers import worker_env

FAKE_MODEL = "fake/model"
NEVER_READ = "files on the bot's machine are never read"


def plant_private_files(*folders: Path) -> None:
    """Valid data that a path-reading /finetune would train on: `private`, private/notes.txt, x.jsonl."""
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "private").mkdir()
        (folder / "private" / "notes.txt").write_text("secret notes\n")
        (folder / "x.jsonl").write_text('{"text": "secret"}\n')
        (folder / "config.toml").write_text("[limits]\n")


async def test_finetune_refuses_every_local_path_before_anything_reads_it(
    fake_discord, tmp_path, monkeypatch
):
    fake = fake_discord
    home = tmp_path / "home"
    bot_cwd = tmp_path / "bot-cwd"
    plant_private_files(bot_cwd, home)
    monkeypatch.chdir(bot_cwd)
    names = ["private", "private/notes.txt", "config.toml", "../x", "/etc/passwd", "./x.jsonl"]
    async with running_bot(fake, bot_config(home, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        for name in names:
            call = await fake.slash("finetune", {"base_model": FAKE_MODEL, "dataset": name})
            [answer] = await call.wait_followups(1, timeout=15)
            assert call.ephemeral
            assert answer.content.startswith(f"dataset {name!r} "), answer.content
            assert (
                "not a Hub dataset id (owner/name)" in answer.content or "nor an https://" in answer.content
            )
            assert NEVER_READ in answer.content, answer.content
        assert await service.list() == []
    # Refused on its text alone: no data check ran (its log is written by the first one), nothing was read.
    assert not (home / "logs" / "data-check.log").exists()
    assert not list((home / "jobs").glob("*/spec.json"))


async def test_ask_takes_names_and_hub_ids_only_and_obeys_the_allow_list(
    fake_discord, fake_hub, tmp_path, monkeypatch
):
    """A Hub adapter of another base model is refused to a member and served to an admin; a path, whether
    it exists (an adapter folder, /etc) or not, gets the same plain "no adapter named" answer."""
    fake = fake_discord
    admin = fake.add_member(9001, "admin", admin=True)
    made = tmp_path / "made-elsewhere"
    write_adapter(made / "evil", fake_spec().replace(base_model="evil/base"), seed=1.0)
    fake_hub.add_repo("evil/other-base", folder_files(made / "evil"))
    write_adapter(made / "fine", fake_spec(), seed=2.0)  # an adapter folder on disk, of an allowed base
    monkeypatch.chdir(made)
    config = bot_config(tmp_path / "home", fake, base_models=(FAKE_MODEL,))
    config = dataclasses.replace(config, serve=dataclasses.replace(config.serve, stream_edit_interval_s=0.05))
    environ = {**worker_env(), "PYTHONPATH": f"{FAKES}:{worker_env()['PYTHONPATH']}"}
    client = ServeClient(config.serve, tmp_path / "serve.log", environ=environ, module="fake_serve")

    async def ask(adapter: str, user=None) -> str:
        """The refusal (a private followup) or the final answer (the edited reply)."""
        call = await fake.slash("ask", {"prompt": "hi there", "adapter": adapter}, user=user)

        def outcome() -> str | None:
            if call.followups:
                return call.followups[0].content
            reply = call.original
            if (
                reply is None
                or reply.loading
                or reply.content.endswith("▌")
                or reply.content.startswith("⏳")
            ):
                return None
            return reply.content or None

        return await fake.wait_for(outcome, timeout=30)

    try:
        async with running_bot(fake, config, hub=access(tmp_path / "home"), serve_client=client):
            refused = await ask("evil/other-base")
            assert "adapter evil/other-base needs base model evil/base, which is not on the allowed list" in (
                refused
            ), refused
            assert await ask("evil/other-base", user=admin) == "echo: hi there "
            answers = {
                name: await ask(name) for name in ("/etc", "/no/such/folder", str(made / "fine"), "fine")
            }
            hint = "list adapters with /adapters, or give a Hub adapter id (owner/name)"
            for name, answer in answers.items():  # word for word the same, whatever exists there
                assert answer == f"there is no adapter named {name!r}. {hint}", answer
            assert client.starts == 1  # only the admin's ask reached a serve worker
    finally:
        await client.close()


async def test_a_failed_job_shows_no_server_path_in_any_discord_message(fake_discord, tmp_path):
    """The worker's error names the job's upload and log by their full paths, and a crashed job's hint
    names its log; every message the bot sent (status edits, completion pings, /job with its log tail)
    names them relative to the job folder instead."""
    fake = fake_discord
    home = tmp_path / "home"
    config = bot_config(home, fake, base_models=(FAKE_MODEL,), queue={"max_attempts": 1})
    async with running_bot(fake, config) as (_bot, service):
        for behaviour in ("steps=4;fail_at=2;fail_with_paths=1", "steps=4;crash_at=2"):
            call = await fake.slash(
                "finetune", {"base_model": FAKE_MODEL}, attachments=[fake_dataset(behaviour)]
            )
            await call.wait_followups(1, timeout=15)
        for job_id in (1, 2):
            await wait_until(lambda job_id=job_id: _failed(service, job_id), timeout=60)
        failed = await service.get(1)
        assert str(home) in failed.error_message  # the worker did name the full path
        await fake.wait_for(lambda: len(fake.messages_mentioning(fake.user.id)) == 2, timeout=30)
        shown = {}
        for job_id in (1, 2):
            call = await fake.slash("job", {"id": job_id})
            [shown[job_id]] = await call.wait_followups(1)
        await fake.wait_for(lambda: _statuses_final(fake), timeout=30)

    sent = json.dumps([request.body for request in fake.requests if request.body is not None])
    assert str(tmp_path) not in sent and "/jobs/" not in sent
    first = json.dumps(shown[1].embeds)
    assert "upload/dataset.jsonl line 3: fake failure" in first
    assert "the full traceback is in train.log (written in the job folder)" in first
    assert "could not read upload/x.jsonl" in first  # the log tail, too
    assert "see the worker log train.log" in json.dumps(shown[2].embeds)


async def _failed(service, job_id: int):
    job = await service.get(job_id)
    return job if job.state == "failed" else None


def _statuses_final(fake) -> bool:
    statuses = [m for m in fake.channel_messages() if m.versions[0].components]
    return len(statuses) == 2 and all("failed" in json.dumps(m.embeds) for m in statuses)
