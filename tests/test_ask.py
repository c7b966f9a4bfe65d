"""Asking adapters: the serve client (restart, idle stop), `qlora-bot ask`, and /ask in the fake Discord."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import ServeConfig
from bot.jobs.asking import ResolvedAdapter, build_request
from bot.workers.serve_worker import ServeClient, Waiting
from protocol.serve import Failed, Finished, Token
from storage.store import Store
from tests.discord_helpers import bot_config
from tests.fake_discord.fixture import fake_discord_fixture  # noqa: F401 - the fake_discord fixture
from tests.serve_helpers import build_adapter
from tests.service_helpers import FAKES, fake_data_checker, fake_executor
from tests.worker_helpers import worker_env


@pytest.fixture(scope="module")
def adapters(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return [build_adapter(tiny_model_dir, root / f"adapter-{seed}", seed=seed) for seed in (1, 2)]


def serve_config(**changes) -> ServeConfig:
    return ServeConfig(**{"idle_timeout_s": 60.0, "max_new_tokens_limit": 2000, **changes})


def client_for(tmp_path, **changes) -> ServeClient:
    return ServeClient(serve_config(**changes), tmp_path / "serve.log", environ=worker_env())


def request_for(adapter_dir, tiny_model_dir, **options):
    adapter = ResolvedAdapter(str(adapter_dir), str(adapter_dir), str(tiny_model_dir), "chat")
    return build_request(
        adapter, "hello there", serve_config(), max_new_tokens=options.pop("tokens", 12), **options
    )


async def answer(client: ServeClient, request) -> dict[str, str]:
    texts = {}
    async for event in client.generate(request):
        assert not isinstance(event, Failed), event
        if isinstance(event, Finished):
            texts[event.variant] = event.text
    return texts


async def test_a_killed_serve_worker_fails_the_pending_ask_and_restarts_on_the_next(
    tmp_path, adapters, tiny_model_dir
):
    client = client_for(tmp_path)
    try:
        first = await answer(client, request_for(adapters[0], tiny_model_dir))
        events = []
        long_request = request_for(adapters[0], tiny_model_dir, tokens=2000)
        async for event in client.generate(long_request):
            events.append(event)
            if isinstance(event, Token) and len(events) == 3:
                os.killpg(client._process.pid, signal.SIGKILL)
        failed = events[-1]
        assert isinstance(failed, Failed) and failed.kind == "internal"
        assert failed.message.startswith("the serve worker stopped unexpectedly")
        assert "ask again to restart it" in failed.hint
        again = await answer(client, request_for(adapters[0], tiny_model_dir))
        assert again == first and client.starts == 2
    finally:
        await client.close()


async def test_the_serve_worker_stops_when_idle(tmp_path, adapters, tiny_model_dir):
    client = client_for(tmp_path, idle_timeout_s=0.5)
    try:
        await answer(client, request_for(adapters[0], tiny_model_dir))
        assert client.running
        for _ in range(100):
            if not client.running:
                break
            await asyncio.sleep(0.1)
        assert not client.running  # the GPU went back
    finally:
        await client.close()


async def test_asks_wait_for_the_gpu_and_say_why(tmp_path, adapters, tiny_model_dir):
    busy = {"reason": "the GPU is busy training job 3"}

    async def gpu_wait():
        reason = busy.pop("reason", None)
        return reason

    client = ServeClient(serve_config(), tmp_path / "serve.log", environ=worker_env(), gpu_wait=gpu_wait)
    try:
        events = [event async for event in client.generate(request_for(adapters[0], tiny_model_dir))]
        assert events[0] == Waiting("the GPU is busy training job 3")
        assert isinstance(events[-1], Finished)
    finally:
        await client.close()


def test_qlora_bot_ask_streams_the_answer_and_compares(tmp_path, adapters, tiny_model_dir):
    env = {**worker_env(), "QLORA_BOT_HOME": str(tmp_path / "home")}
    command = [sys.executable, "-m", "bot.cli", "ask", "--adapter", str(adapters[0]), "--max-new-tokens", "8"]
    result = subprocess.run(
        [*command, "--compare", "hello"], capture_output=True, text=True, env=env, timeout=240
    )
    assert result.returncode == 0, result.stderr
    adapter_part, base_part = result.stdout.split(f"--- base model ({tiny_model_dir}) ---")
    assert adapter_part.strip() and base_part.strip() and adapter_part.strip() != base_part.strip()
    assert "[adapter] 8 tokens in" in result.stderr or "[adapter]" in result.stderr
    missing = subprocess.run(
        [*command[:5], "nope", "hi"], capture_output=True, text=True, env=env, timeout=60
    )
    assert missing.returncode == 2 and "there is no adapter named 'nope'" in missing.stderr


async def _register(store: Store, adapter_dir, tiny_model_dir, name: str) -> None:
    job, _ = await store.create_job(
        owner="discord:1", name=name, spec=_spec(tiny_model_dir), jobs_dir=Path("/j")
    )
    await store.add_adapter(name=name, job_id=job.id, base_model=str(tiny_model_dir), path=str(adapter_dir))


def _spec(tiny_model_dir):
    from protocol.job_spec import DatasetSpec, JobSpec

    return JobSpec(base_model=str(tiny_model_dir), dataset=DatasetSpec(source="x.jsonl"))


async def test_ask_in_discord_streams_compares_files_and_checks_roles(fake_discord, tmp_path, tiny_model_dir):
    from bot.discord_bot.client import QloraBot
    from bot.jobs.scheduler import build_slots
    from bot.jobs.service import JobService

    fake = fake_discord
    asker = fake.add_member(555, "asker", roles=["askers"])
    config = bot_config(
        tmp_path, fake, base_models=(str(tiny_model_dir),), discord={"ask_roles": ("askers",)}
    )
    config = dataclasses.replace(config, serve=serve_config(stream_edit_interval_s=0.05))
    adapter_dirs = [tmp_path / "a", tmp_path / "b"]
    for folder in adapter_dirs:
        folder.mkdir()
    async with await Store.open(config.database_path()) as store:
        await _register(store, adapter_dirs[0], tiny_model_dir, "tiny-a")
        await _register(store, adapter_dirs[1], tiny_model_dir, "tiny-b")
        service = JobService(store, config, data_checker=fake_data_checker(config))
        await service.start_runner(fake_executor(), build_slots([], 1))
        client = ServeClient(
            config.serve, tmp_path / "serve.log", environ=_fake_serve_env(), module="fake_serve"
        )
        bot = QloraBot(config=config, service=service, serve_client=client, guild_ready_timeout=0.1)
        try:
            async with fake.running(bot):
                choices = await fake.autocomplete(
                    "ask", {"prompt": "hi", "adapter": "tiny"}, focused="adapter"
                )
                assert [choice["value"] for choice in choices] == ["tiny-b", "tiny-a"]  # newest first

                refused = await fake.slash("ask", {"prompt": "hi", "adapter": "tiny-a"})
                await refused.wait_response()
                assert refused.ephemeral
                assert "/ask needs one of these roles: askers" in refused.response["data"]["content"]

                prompt = "one two three four five six seven eight nine ten"
                call = await fake.slash("ask", {"prompt": prompt, "adapter": "tiny-a"}, user=asker)
                original = await call.wait_original(timeout=30)
                await fake.wait_for(lambda: original.content == f"echo: {prompt} ", timeout=30)
                partial = [v.content for v in original.versions if v.content.endswith("▌")]
                assert len(partial) >= 2  # streamed: several edits before the final text

                compare = await fake.slash(
                    "ask", {"prompt": "hi", "adapter": "tiny-b", "compare": True}, user=asker
                )
                compared = await compare.wait_original(timeout=30)
                await fake.wait_for(lambda: compared.embeds, timeout=30)
                fields = compared.embeds[0]["fields"]
                assert fields[0]["name"].startswith(f"Base: {tiny_model_dir.name} · ")  # no server path
                assert fields[0]["name"].endswith("tokens/s") and fields[0]["value"] == "echo: base hi "
                assert (
                    fields[1]["name"].startswith("Adapter: tiny-b · ") and fields[1]["value"] == "echo: hi "
                )

                middle = await fake.slash("ask", {"prompt": "long:3000", "adapter": "tiny-a"}, user=asker)
                middle_message = await middle.wait_original(timeout=30)
                await fake.wait_for(lambda: middle_message.embeds, timeout=30)
                assert (
                    len(middle_message.embeds[0]["description"]) == 3000
                )  # too long for a message: an embed

                long = await fake.slash("ask", {"prompt": "long:6000", "adapter": "tiny-a"}, user=asker)
                long_message = await long.wait_original(timeout=30)
                await fake.wait_for(lambda: "answer.txt" in long_message.files, timeout=30)
                assert len(long_message.files["answer.txt"]) == 6000  # too long for an embed: a file
        finally:
            await client.close()
            await service.close()


def _fake_serve_env() -> dict[str, str]:
    return {**worker_env(), "PYTHONPATH": f"{FAKES}:{worker_env()['PYTHONPATH']}"}


async def test_a_silent_serve_worker_is_stopped_its_asks_fail_and_the_next_restarts(fake_discord, tmp_path):
    """/ask through the real discord.py client; the fake serve worker stops talking after one token."""
    from bot.discord_bot.client import QloraBot
    from bot.jobs.scheduler import build_slots
    from bot.jobs.service import JobService

    fake = fake_discord
    asker = fake.add_member(556, "asker")
    base = str(tmp_path / "base")
    config = bot_config(tmp_path, fake, base_models=(base,))
    # An answer may take 1 s; a worker that holds asks and says nothing for 1 s beyond that is stuck.
    serve = serve_config(stream_edit_interval_s=0.05, request_timeout_s=1.0)
    config = dataclasses.replace(config, serve=serve)
    (tmp_path / "a").mkdir()
    async with await Store.open(config.database_path()) as store:
        await _register(store, tmp_path / "a", base, "tiny-a")
        service = JobService(store, config, data_checker=fake_data_checker(config))
        await service.start_runner(fake_executor(), build_slots([], 1))
        client = ServeClient(
            serve, tmp_path / "serve.log", environ=_fake_serve_env(), module="fake_serve", silence_grace_s=1.0
        )
        bot = QloraBot(config=config, service=service, serve_client=client, guild_ready_timeout=0.1)
        try:
            async with fake.running(bot):
                stuck = await fake.slash("ask", {"prompt": "hang", "adapter": "tiny-a"}, user=asker)
                stuck_message = await stuck.wait_original(timeout=30)
                await fake.wait_for(lambda: "I was about to say" in stuck_message.content, timeout=30)
                # Sent to the stuck worker too, which never reads it: the client must fail it as well.
                held = await fake.slash("ask", {"prompt": "second in line", "adapter": "tiny-a"}, user=asker)
                held_message = await held.wait_original(timeout=30, loaded=False)
                for message in (stuck_message, held_message):
                    await fake.wait_for(lambda m=message: m.content.startswith("❌"), timeout=30)
                    assert message.content.startswith(
                        "❌ internal: the serve worker stopped answering: nothing from it for "
                    ), message.content
                    assert "ask again to restart it" in message.content
                assert not client.running

                # A fresh worker answers. Silence is the worker's, not one ask's: the second ask hears
                # nothing while the long answer streams for 2.5 s (beyond timeout + grace), yet the
                # worker is talking, so neither is cut.
                long = await fake.slash("ask", {"prompt": "long:5000", "adapter": "tiny-a"}, user=asker)
                long_message = await long.wait_original(timeout=30)
                queued = await fake.slash("ask", {"prompt": "after that", "adapter": "tiny-a"}, user=asker)
                queued_message = await queued.wait_original(timeout=30, loaded=False)
                await fake.wait_for(lambda: "answer.txt" in long_message.files, timeout=30)
                assert len(long_message.files["answer.txt"]) == 5000
                await fake.wait_for(lambda: queued_message.content == "echo: after that ", timeout=30)
                assert client.starts == 2
        finally:
            await client.close()
            await service.close()
