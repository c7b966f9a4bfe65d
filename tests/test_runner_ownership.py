"""Who runs the queue: one live runner per data directory, proven by its lock; whichever qlora-bot
process holds it runs every queued job (jobs a killed CLI left behind included); and a `qlora-bot train`
that is told to stop (SIGTERM, SIGHUP) stops its worker at a checkpoint instead of leaving it behind."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.jobs.scheduler import build_slots
from bot.jobs.service import JobService, Requester, RunnerBusy
from protocol.events import Progress
from storage.store import Store
from tests.service_helpers import (
    fake_executor,
    fake_spec,
    finished,
    make_config,
    open_service,
    shut,
    wait_until,
)
from tests.test_cli_train import cli
from tests.worker_helpers import train_args, worker_env, write_chat_dataset

ALICE = Requester("local:alice")


async def test_a_second_runner_never_touches_the_workers_of_a_live_one(tmp_path):
    home = tmp_path / "home"
    first = await open_service(home)
    try:
        job = await first.submit(fake_spec("steps=40;step_s=0.05"), ALICE)
        await wait_until(lambda: first.store.last_event(job.id, "progress"))
        async with await Store.open(first.config.database_path()) as store:
            second = JobService(store, make_config(home))
            with pytest.raises(RunnerBusy) as refused:
                await second.start_runner(fake_executor(), build_slots([], 1))
            assert refused.value.holder_pid == os.getpid()
            await second.close()
        ended = await finished(first, job.id)
        assert ended.state == "succeeded" and ended.cancel_requested_by is None
        assert [attempt.outcome for attempt in await first.store.attempts(job.id)] == ["succeeded"]
    finally:
        await shut(first)


def start_train(args: list[str], home: Path) -> subprocess.Popen:
    env = {**worker_env(), "QLORA_BOT_HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "bot.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def long_job(model: Path, dataset: Path, steps: int = 400) -> list[str]:
    return train_args(model, dataset, steps=steps, checkpoint_steps=5)


def job_state(home: Path, job_id: int) -> tuple:
    async def read():
        async with await Store.open(home / "qlora-bot.db") as store:
            job = await store.get_job(job_id)
            attempts = await store.attempts(job_id) if job else []
            checkpoint = await store.last_event(job_id, "checkpoint") if job else None
            return job, attempts, checkpoint

    return asyncio.run(read())


def wait_for(check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    raise TimeoutError("condition not met in time")


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def kill_cli_and_strand_its_job(model: Path, dataset: Path, home: Path) -> int:
    """kill -9 of `qlora-bot train` once its job has a checkpoint: the job is left `running`."""
    process = start_train(long_job(model, dataset, steps=40), home)
    try:
        wait_for(lambda: job_state(home, 1)[2])
    finally:
        process.kill()
        process.wait(timeout=30)
    job, attempts, _ = job_state(home, 1)
    assert job.state == "running"
    wait_for(lambda: not alive(attempts[0].pid), timeout=60)  # it dies at its next event, unread
    return 1


def test_the_next_train_runs_the_job_a_killed_train_left_behind(tiny_model_dir, tmp_path, data_home):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=32)
    stranded = kill_cli_and_strand_its_job(tiny_model_dir, dataset, data_home)

    result = cli(*long_job(tiny_model_dir, dataset, steps=2), home=data_home)
    assert result.returncode == 0, result.stderr
    job, attempts, _ = job_state(data_home, stranded)
    assert job.state == "succeeded", (job.state, job.error_message)
    assert [attempt.outcome for attempt in attempts] == ["crashed", "succeeded"]
    assert attempts[1].resumed_from and "checkpoint-" in attempts[1].resumed_from
    assert job_state(data_home, 2)[0].state == "succeeded"


def test_a_resume_of_a_stranded_jobs_checkpoint_follows_that_job(tiny_model_dir, tmp_path, data_home):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=32)
    stranded = kill_cli_and_strand_its_job(tiny_model_dir, dataset, data_home)
    checkpoint = job_state(data_home, stranded)[2].event.path

    result = cli(*long_job(tiny_model_dir, dataset, steps=40), "--resume", checkpoint, home=data_home)
    assert result.returncode == 0, result.stderr
    assert f"job {stranded} owns that checkpoint and has not ended" in result.stderr
    assert result.stdout.strip() == f"adapter: {data_home / 'jobs' / str(stranded) / 'adapter'}"
    job, attempts, _ = job_state(data_home, stranded)
    assert job.state == "succeeded" and len(attempts) == 2
    assert job_state(data_home, stranded + 1)[0] is None  # no second job in the same folder


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_the_worker_at_a_checkpoint(signum, tiny_model_dir, tmp_path, data_home):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=32)
    process = start_train(long_job(tiny_model_dir, dataset), data_home)
    try:
        wait_for(lambda: job_progress(data_home) >= 2)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, stderr
    job, attempts, checkpoint = job_state(data_home, 1)
    assert not alive(attempts[0].pid)  # no worker left training unsupervised
    assert job.state == "cancelled" and checkpoint is not None
    if signum == signal.SIGTERM:
        assert "resume with:" in stderr
    else:  # the terminal is gone: nothing more is written to it
        assert "resume with:" not in stderr


def job_progress(home: Path) -> int:
    async def read() -> int:
        async with await Store.open(home / "qlora-bot.db") as store:
            stored = await store.last_event(1, "progress")
            return stored.event.step if stored is not None and isinstance(stored.event, Progress) else 0

    return asyncio.run(read())
