"""Fault tests: kill -9 of a worker (the real trainer) and of the process running the queue."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bot.jobs.executor import LocalExecutor
from bot.jobs.service import Requester
from protocol.events import Done, Progress, Started
from storage.store import Store
from tests.service_helpers import FAKES, fake_spec, finished, open_service, shut, wait_until
from tests.worker_helpers import REPO_ROOT, tiny_spec, worker_env, write_chat_dataset

ALICE = Requester("local:alice")


async def test_kill_9_of_a_real_worker_resumes_from_its_checkpoint(tiny_model_dir, tmp_path):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=32)
    spec = tiny_spec(tiny_model_dir, dataset, max_steps=8, checkpoint_steps=2, batch_size=1)
    service = await open_service(tmp_path / "home", executor=LocalExecutor(worker_env()))
    try:
        job = await service.submit(spec.replace(name="real"), ALICE)
        await wait_until(lambda: service.store.last_event(job.id, "checkpoint"), timeout=120)
        pid = (await service.store.attempts(job.id))[0].pid
        os.killpg(pid, signal.SIGKILL)
        ended = await finished(service, job.id, timeout=180)
        assert ended.state == "succeeded", ended.error_message
        attempts = await service.store.attempts(job.id)
        assert [attempt.outcome for attempt in attempts] == ["crashed", "succeeded"]
        assert attempts[0].detail == "the worker killed by signal SIGKILL without reporting a result"
        resumed_step = int(Path(attempts[1].resumed_from).name.split("-")[-1])
        stored = await service.events(job.id)
        second = [s.event for s in stored if s.attempt == 2]
        assert second[0] == Started(pid=second[0].pid, attempt_resumes_from=attempts[1].resumed_from)
        steps = [event.step for event in second if isinstance(event, Progress)]
        assert steps[0] == resumed_step + 1 and steps[-1] == 8
        first_steps = [s.event.step for s in stored if s.attempt == 1 and isinstance(s.event, Progress)]
        assert first_steps and first_steps == sorted(first_steps)  # the first attempt's events are kept
        assert isinstance(stored[-1].event, Done)
    finally:
        await shut(service)


QUEUE_PROCESS = """
import asyncio, os, sys
sys.path[:0] = [{repo!r}]
from tests.service_helpers import fake_spec, open_service
from bot.jobs.service import Requester

async def main():
    service = await open_service({home!r})
    job = await service.submit(fake_spec("steps=60;step_s=0.05"), Requester("local:alice"))
    print(job.id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


async def test_a_new_service_reconciles_jobs_a_killed_one_left_running(tmp_path):
    home = tmp_path / "home"
    script = textwrap.dedent(QUEUE_PROCESS.format(repo=str(REPO_ROOT), home=str(home)))
    env = {**os.environ, "PYTHONPATH": str(FAKES)}
    queue_process = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        job_id = int(queue_process.stdout.readline())
        async with await Store.open(home / "qlora-bot.db") as store:
            await wait_until(lambda: store.last_event(job_id, "checkpoint"), timeout=60)
        queue_process.kill()  # kill -9 of the "bot": its worker is orphaned, the job left running
        queue_process.wait(timeout=30)
    finally:
        queue_process.kill()

    service = await open_service(home)
    try:
        ended = await finished(service, job_id)
        assert ended.state == "succeeded" and ended.attempt == 2
        attempts = await service.store.attempts(job_id)
        assert [(a.outcome, a.detail) for a in attempts] == [
            ("crashed", "the bot stopped while the job was running"),
            ("succeeded", None),
        ]
        first_pid = attempts[0].pid
        assert (
            not Path(f"/proc/{first_pid}").exists()
            or b"fake_trainer" not in Path(f"/proc/{first_pid}/cmdline").read_bytes()
        )  # the orphan was stopped, so the job never ran twice at once
        steps = [s.event.step for s in await service.events(job_id) if isinstance(s.event, Progress)]
        assert steps[-1] == 60 and sorted(set(steps)) == list(range(1, 61))
    finally:
        await shut(service)


async def test_a_recorded_result_is_applied_on_restart(tmp_path):
    """The worker reported `done` but the bot died before applying it: the job succeeds, no rerun."""
    service = await open_service(tmp_path)
    await service.close()
    job = await service.submit(fake_spec("steps=1"), ALICE)
    await service.store.start_job(job.id, slot="cpu", resumed_from=None)
    await service.store.append_event(job.id, 1, Done(adapter_dir=f"{job.folder}/adapter", metrics={}))
    await service.store.close()
    service = await open_service(tmp_path)
    try:
        ended = await service.get(job.id)
        assert ended.state == "succeeded" and ended.adapter_path == f"{job.folder}/adapter"
        assert len(await service.store.attempts(job.id)) == 1
    finally:
        await shut(service)


@pytest.mark.parametrize(
    ("phase", "kind", "message"),
    [
        (
            "validating",
            "user_error",
            "the worker died twice in the same way while reading, checking and tokenizing the dataset "
            "(killed by signal SIGABRT), so the dataset fake:abort_in=validating is the likely cause; "
            "the job was not retried again",
        ),
        (
            "loading_model",
            "internal",
            "the worker died twice in the same way while loading the base model (killed by signal SIGABRT); "
            "not retried again",
        ),
    ],
)
async def test_a_crash_that_repeats_before_training_is_not_retried_again(tmp_path, phase, kind, message):
    service = await open_service(tmp_path / "home", max_attempts=3)
    try:
        job = await service.submit(fake_spec(f"abort_in={phase}"), ALICE)
        ended = await finished(service, job.id)
        assert (ended.state, ended.error_kind, ended.error_message) == ("failed", kind, message)
        assert ended.error_hint
        # The first crash was retried (the host may have been short of memory); the second, identical
        # one ended the job instead of a third attempt.
        attempts = await service.store.attempts(job.id)
        assert [attempt.outcome for attempt in attempts] == ["crashed", "crashed"]
    finally:
        await shut(service)


async def test_a_crash_in_training_is_still_retried_up_to_max_attempts(tmp_path):
    service = await open_service(tmp_path / "home", max_attempts=3)
    try:
        job = await service.submit(fake_spec("steps=4;crash_at=3"), ALICE)
        ended = await finished(service, job.id)
        assert ended.state == "failed" and ended.error_message.startswith("the job crashed 3 times")
        assert len(await service.store.attempts(job.id)) == 3
    finally:
        await shut(service)
