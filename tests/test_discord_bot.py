"""The Discord bot end to end: the real discord.py client against the loopback fake Discord."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

from protocol.events import Progress
from tests.discord_helpers import EDIT_INTERVAL_S, bot_config, embed_field, fake_dataset, running_bot
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture
from tests.service_helpers import wait_until
from tests.worker_helpers import worker_env, write_chat_dataset

FAKE_MODEL = "fake/model"


def status_message(fake, job_id: int):
    """The job's status message; None until the outbox delivered it (just after the job was queued)."""
    return next((m for m in fake.channel_messages() if _is_status(m, job_id)), None)


def _is_status(message, job_id: int) -> bool:
    """The message posted with the job's Cancel button (it loses the button when the job ends)."""
    first = message.versions[0]
    return any(
        c.get("custom_id") == f"qlora:cancel:{job_id}" for row in first.components for c in row["components"]
    )


def edit_gaps(message) -> list[float]:
    times = [version.at for version in message.versions]
    return [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(times)]


async def test_finetune_with_an_attached_jsonl_on_the_tiny_model(fake_discord, tmp_path, tiny_model_dir):
    fake = fake_discord
    config = bot_config(tmp_path / "home", fake, base_models=(str(tiny_model_dir),))
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=24).read_bytes()
    async with running_bot(fake, config, executor=_real_executor()) as (_bot, service):
        call = await fake.slash(
            "finetune",
            {
                "base_model": str(tiny_model_dir),
                "max_steps": 3,
                "max_length": 128,
                "r": 4,
                "name": "chat-test",
            },
            attachments=[("chat.jsonl", dataset, "application/json")],
        )
        response = await call.wait_response()
        assert response["type"] == 5 and call.ephemeral  # deferred within 3 s, privately
        [confirmation] = await call.wait_followups(1, timeout=15)
        assert "Queued job **1** (`chat-test`" in confirmation.content
        job = await service.get(1)
        assert job.spec.dataset.kind == "upload" and job.spec.dataset.source == "upload/dataset.jsonl"
        stored = Path(job.folder) / job.spec.dataset.source  # a generated name, in the job folder
        assert stored.read_bytes() == dataset

        done = await fake.wait_for(lambda: fake.messages_mentioning(fake.user.id), timeout=120)
        completion = done[0]
        assert completion.content.startswith(f"<@{fake.user.id}> job 1 (chat-test) succeeded")
        assert completion.files["loss.png"].startswith(b"\x89PNG")
        assert embed_field(completion, "Try it") == "`/ask adapter:chat-test-1`"
        assert embed_field(completion, "Final loss") is not None

        status = status_message(fake, 1)
        await fake.wait_for(lambda: "succeeded" in (embed_field(status, "State") or ""), timeout=10)
        assert status.components == []  # no Cancel button once the job ended
        assert len(status.versions) >= 3  # created, then edited as the job moved
        assert all(gap >= EDIT_INTERVAL_S * 0.9 for gap in edit_gaps(status)), edit_gaps(status)


async def test_the_cancel_button_works_for_the_owner_only(fake_discord, tmp_path):
    fake = fake_discord
    stranger = fake.add_member(4242, "stranger")
    async with running_bot(fake, bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake, "steps=2000;step_s=0.02")
        status = await fake.wait_for(lambda: status_message(fake, 1), timeout=10)
        await wait_until(lambda: service.store.last_event(1, "progress"))

        refused = await fake.click(status, "qlora:cancel:1", user=stranger)
        await refused.wait_response()
        assert refused.ephemeral and "job 1 is not yours" in refused.response["data"]["content"]
        assert (await service.get(1)).state == "running"

        accepted = await fake.click(status, "qlora:cancel:1")
        await accepted.wait_response()
        assert accepted.ephemeral and "Cancelling job 1" in accepted.response["data"]["content"]
        ended = await wait_until(lambda: _ended(service, 1))
        assert ended.state == "cancelled"
        await fake.wait_for(lambda: embed_field(status, "State") == "cancelled", timeout=10)
        assert status.components == []


async def test_a_cancelled_job_says_who_cancelled_and_its_owner_can_resume_it(fake_discord, tmp_path):
    """No owner ids or paths in the channel: a mention, and a Resume button that queues a new job
    continuing from the checkpoint (only its owner or an admin may press it)."""
    fake = fake_discord
    stranger = fake.add_member(4243, "stranger")
    home = tmp_path / "home"
    async with running_bot(fake, bot_config(home, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake, "steps=40;step_s=0.1;checkpoint_every=5")
        await wait_until(lambda: service.store.last_event(1, "checkpoint"))
        call = await fake.slash("cancel", {"id": 1})
        await call.wait_followups(1)
        [ended] = await fake.wait_for(lambda: fake.messages_mentioning(fake.user.id), timeout=30)
        checkpoint = (await service.get(1)).checkpoint_path
        step = int(Path(checkpoint).name.split("-")[-1])

        shown = ended.content + json.dumps(ended.embeds)
        assert f"Cancelled by <@{fake.user.id}>" in shown
        assert "discord:" not in shown and str(home) not in shown and "checkpoint-" not in shown
        assert f"continue from its checkpoint at step {step}" in shown
        status = status_message(fake, 1)
        await fake.wait_for(lambda: embed_field(status, "State") == "cancelled", timeout=10)
        assert "discord:" not in json.dumps(status.embeds) and str(home) not in json.dumps(status.embeds)

        refused = await fake.click(ended, "qlora:resume:1", user=stranger)
        [answer] = await refused.wait_followups(1)
        assert "job 1 is not yours" in answer.content
        assert [job.id for job in await service.list()] == [1]

        pressed = await fake.click(ended, "qlora:resume:1")
        [answer] = await pressed.wait_followups(1)
        assert "Resuming job 1 as job **2**" in answer.content
        resumed = await wait_until(lambda: _ended(service, 2), timeout=60)
        assert resumed.state == "succeeded" and resumed.spec.resume_from == checkpoint
        steps = [s.event.step for s in await service.events(2) if isinstance(s.event, Progress)]
        assert steps[0] == step + 1 and steps[-1] == 40
        assert await fake.wait_for(lambda: status_message(fake, 2), timeout=10)
        again = await fake.click(ended, "qlora:resume:1")  # a second press: job 2 exists, not a third
        [answer] = await again.wait_followups(1)
        assert "job 1 was already resumed as job 2 (succeeded)" in answer.content
        assert len(await service.list()) == 2


async def test_cancel_command_by_id(fake_discord, tmp_path):
    fake = fake_discord
    async with running_bot(fake, bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake, "steps=2000;step_s=0.02")
        await wait_until(lambda: service.store.last_event(1, "progress"))
        call = await fake.slash("cancel", {"id": 1})
        [answer] = await call.wait_followups(1)
        assert "Cancelling job 1" in answer.content or "Job 1 cancelled" in answer.content
        assert (await wait_until(lambda: _ended(service, 1))).state == "cancelled"


async def test_role_gate_and_quota_refusals_name_the_rule(fake_discord, tmp_path):
    fake = fake_discord
    trainer = fake.add_member(777, "trainer", roles=["trainers"])
    config = bot_config(
        tmp_path,
        fake,
        base_models=(FAKE_MODEL,),
        discord={"finetune_roles": ("trainers",)},
        queue={"max_queued_per_user": 1},
    )
    async with running_bot(fake, config) as (_bot, service):
        call = await fake.slash("finetune", {"base_model": FAKE_MODEL}, attachments=[fake_dataset("steps=1")])
        await call.wait_response()
        assert call.ephemeral
        assert "/finetune needs one of these roles: trainers" in call.response["data"]["content"]
        assert await service.list() == []

        await _finetune(fake, "steps=2000;step_s=0.02", user=trainer)
        await wait_until(lambda: service.store.last_event(1, "progress"))  # running: no longer waiting
        await _finetune(fake, "steps=2000;step_s=0.02", user=trainer)
        third = await _finetune(fake, "steps=1", user=trainer)
        [refusal] = third.followups
        assert "1 jobs waiting (limit queue.max_queued_per_user = 1)" in refusal.content
        assert len(await service.list()) == 2


async def test_invalid_options_are_refused_privately_with_what_to_change(fake_discord, tmp_path):
    fake = fake_discord
    config = bot_config(
        tmp_path, fake, base_models=(FAKE_MODEL,), limits={"max_r": 64, "max_attachment_mb": 0.001}
    )
    async with running_bot(fake, config) as (_bot, service):
        cases = [
            (
                {"base_model": FAKE_MODEL, "r": 128},
                [fake_dataset("steps=1")],
                "r=128 is above this server's limit of 64 (limits.max_r)",
            ),
            (
                {"base_model": "someone/else"},
                [fake_dataset("steps=1")],
                "base model someone/else is not on the allowed list",
            ),
            ({"base_model": FAKE_MODEL}, [], "give either dataset or file, not both or neither"),
            (
                {"base_model": FAKE_MODEL, "dataset": "ftp://x"},
                [],
                "neither a Hub dataset id (owner/name) nor an https:// URL",
            ),
            (
                {"base_model": FAKE_MODEL},
                [("big.jsonl", b"x" * 4096, "application/json")],
                "above the 0.001 MiB limit (limits.max_attachment_mb)",
            ),
            (
                {"base_model": FAKE_MODEL},
                [("data.xlsx", b"x", "application/octet-stream")],
                "unsupported file type .xlsx",
            ),
        ]
        for options, attachments, message in cases:
            call = await fake.slash("finetune", options, attachments=attachments)
            [answer] = await call.wait_followups(1)
            assert call.ephemeral and message in answer.content, (options, answer.content)
        assert await service.list() == []


async def test_a_malformed_upload_is_refused_at_once_naming_its_file_and_line(fake_discord, tmp_path):
    """The worker's data checks run at submit time: a broken line 3 is reported in seconds, privately,
    by the name the person gave the file, while the queue is busy with another job; it gets no job."""
    fake = fake_discord
    async with running_bot(fake, bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake, "steps=2000;step_s=0.05")
        await wait_until(lambda: service.store.last_event(1, "progress"))
        broken = b'{"text": "fine"}\n{"text": "also fine"}\n{"text": "broken"\n'
        call = await fake.slash(
            "finetune",
            {"base_model": FAKE_MODEL},
            attachments=[("my chats.jsonl", broken, "application/json")],
        )
        [answer] = await call.wait_followups(1, timeout=15)
        assert call.ephemeral
        assert "my chats.jsonl line 3: not valid JSON" in answer.content, answer.content
        assert [job.id for job in await service.list()] == [1]  # no job for the broken file
        assert (await service.get(1)).state == "running"
        assert not any(_is_status(message, 2) for message in fake.channel_messages())


async def test_429_on_edits_loses_no_edit_and_never_slows_training(fake_discord, tmp_path):
    fake = fake_discord
    async with running_bot(fake, bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake, "steps=60;step_s=0.05")
        fake.rate_limit_edits(fake.channel_id, count=4, retry_after=0.4)
        ended = await wait_until(lambda: _ended(service, 1))
        assert ended.state == "succeeded"
        steps = [s.event.step for s in await service.events(1) if isinstance(s.event, Progress)]
        assert steps == list(range(1, 61))  # every event of the job, none lost to Discord's limits
        assert (ended.finished_at - ended.started_at) < 10  # the worker never waited for Discord
        status = status_message(fake, 1)
        await fake.wait_for(lambda: embed_field(status, "State") == "succeeded", timeout=15)
        assert embed_field(status, "Step") == "60/60"
        assert len([f for f in fake.faults.injected if "429" in str(f)]) >= 1


async def test_progress_flows_after_the_interaction_token_expired(fake_discord, tmp_path):
    fake = fake_discord
    async with running_bot(fake, bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake, "steps=40;step_s=0.05")
        fake.expire_interaction_tokens()  # 15 minutes later, as far as Discord is concerned
        assert (await wait_until(lambda: _ended(service, 1))).state == "succeeded"
        completion = await fake.wait_for(lambda: fake.messages_mentioning(fake.user.id), timeout=15)
        assert "job 1 (data) succeeded" in completion[0].content
        status = status_message(fake, 1)
        await fake.wait_for(lambda: embed_field(status, "State") == "succeeded", timeout=15)


async def test_after_a_restart_the_same_status_message_continues(fake_discord, tmp_path):
    fake = fake_discord
    config = bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))
    async with running_bot(fake, config) as (_bot, service):
        # 10 s of training: the first process must be gone long before the job could end (CI is slow).
        await _finetune(fake, "steps=200;step_s=0.05;checkpoint_every=5")
        await wait_until(lambda: service.store.last_event(1, "checkpoint"))
        status = status_message(fake, 1)
        versions_before = len(status.versions)
    # The whole process stopped (jobs checkpointed); a new one starts on the same data directory.
    async with running_bot(fake, config) as (_bot, service):
        ended = await wait_until(lambda: _ended(service, 1), timeout=60)
        assert ended.state == "succeeded" and ended.attempt == 2
        await fake.wait_for(lambda: embed_field(status, "State") == "succeeded", timeout=15)
        assert len(status.versions) > versions_before  # the same message, edited again
        assert [m.id for m in fake.channel_messages() if _is_status(m, 1)] == [status.id]
        completion = await fake.wait_for(lambda: fake.messages_mentioning(fake.user.id), timeout=15)
        assert "job 1 (data) succeeded" in completion[0].content


async def test_jobs_job_queue_and_adapters_commands(fake_discord, tmp_path):
    fake = fake_discord
    async with running_bot(fake, bot_config(tmp_path, fake, base_models=(FAKE_MODEL,))) as (_bot, service):
        await _finetune(fake, "steps=3")
        await wait_until(lambda: _ended(service, 1))
        await _finetune(fake, "steps=2000;step_s=0.02")
        await _finetune(fake, "steps=3")
        await wait_until(lambda: service.store.last_event(2, "progress"))
        answers = {}
        for name, options in (
            ("jobs", {"scope": "all"}),
            ("job", {"id": 1}),
            ("queue", {}),
            ("adapters", {}),
        ):
            call = await fake.slash(name, options)
            [answers[name]] = await call.wait_followups(1)
            assert call.ephemeral
        jobs_text = answers["jobs"].embeds[0]["description"]
        assert "**1** `data` succeeded" in jobs_text and "**2** `data` running" in jobs_text
        assert embed_field(answers["job"], "State") == "succeeded"
        log_tail = answers["job"].embeds[0]["description"]
        assert "Log (last lines)" in log_tail  # the owner sees the job's own log lines
        assert "INFO trainer.fake: fake trainer: 3 steps from step 0" in log_tail
        queue_text = answers["queue"].embeds[0]["description"]
        assert "▶ job 2" in queue_text and "#1 job 3" in queue_text
        assert "`data-1` on `fake/model` (job 1)" in answers["adapters"].embeds[0]["description"]


async def _finetune(fake, behaviour: str, user=None):
    options = {"base_model": FAKE_MODEL}
    call = await fake.slash("finetune", options, attachments=[fake_dataset(behaviour)], user=user)
    await call.wait_followups(1, timeout=15)
    return call


async def _ended(service, job_id: int):
    job = await service.get(job_id)
    return job if job.is_terminal else None


def _real_executor():
    from bot.jobs.executor import LocalExecutor

    return LocalExecutor(worker_env())
