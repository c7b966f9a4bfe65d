"""What Discord may name and see, through the real discord.py client against the fake Discord: /finetune
takes a Hub id, an https URL or an attachment and never a path on the bot's machine; /ask takes adapter
names and Hub ids and obeys the base-model allow-list; no message shows an absolute server path."""

from __future__ import annotations

from pathlib import Path

from tests.discord_helpers import bot_config, running_bot
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture

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
