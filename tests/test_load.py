"""Fifty submissions from five processes at once while a sixth runs the queue, is killed (kill -9) mid-way
and replaced: every accepted job is recorded and ends in a terminal state, the daily quota refuses
exactly what it should, and nothing is cancelled that nobody cancelled (no process but the lock holder
ever stops a worker)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time

from storage.store import Store
from tests.service_helpers import FAKES
from tests.worker_helpers import REPO_ROOT

OWNERS = 5
SUBMISSIONS = 10  # per owner
PER_DAY = 8  # queue.max_jobs_per_day: two of each owner's ten are refused
QUEUE = {"max_jobs_per_day": PER_DAY, "max_queued_per_user": 100, "max_running_per_user": 2}

RUNNER = """
import asyncio, sys
sys.path[:0] = [{repo!r}]
from tests.service_helpers import open_service

async def main():
    await open_service({home!r}, slots=3, **{queue!r})
    print("running", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""

SUBMITTER = """
import asyncio, json, random, sys
sys.path[:0] = [{repo!r}]
from protocol.errors import UserError
from bot.jobs.scheduler import build_slots
from bot.jobs.service import Requester, RunnerBusy
from tests.service_helpers import fake_executor, fake_spec, open_service

async def main():
    owner = Requester({owner!r})
    random.seed({owner!r})
    service = await open_service({home!r}, start=False, **{queue!r})
    accepted, refused, cancelled = [], [], []
    for index in range({count}):
        behaviour = "steps=6;step_s=0.05" + (";crash_once_at=3" if index % 4 == 1 else "")
        try:
            job = await service.submit(fake_spec(behaviour, name=f"n{{index}}"), owner)
            accepted.append(job.id)
        except UserError as error:
            refused.append(error.message)
        await asyncio.sleep(random.uniform(0, 0.1))
        if index == 2:
            await service.cancel(accepted[-1], owner)
            cancelled.append(accepted[-1])
    try:
        await service.start_runner(fake_executor(), build_slots([], 1))
        busy = False
    except RunnerBusy:
        busy = True
    await service.close()
    await service.store.close()
    print(json.dumps({{"accepted": accepted, "refused": refused, "cancelled": cancelled, "busy": busy}}))

asyncio.run(main())
"""


def start(script: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(FAKES)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script)], stdout=subprocess.PIPE, text=True, env=env
    )


def read_jobs(home) -> tuple[list, dict]:
    async def read():
        async with await Store.open(home / "qlora-bot.db") as store:
            jobs = await store.list_jobs(limit=1000)
            attempts = {job.id: await store.attempts(job.id) for job in jobs}
            return jobs, attempts

    return asyncio.run(read())


def test_fifty_jobs_from_several_processes_all_end_and_only_owners_cancel(tmp_path):
    home = str(tmp_path / "home")
    fill = {"repo": str(REPO_ROOT), "home": home, "queue": QUEUE}
    runner = start(RUNNER.format(**fill))
    replacement = None
    try:
        assert runner.stdout.readline().strip() == "running"
        submitters = [
            start(SUBMITTER.format(**fill, owner=f"local:user{i}", count=SUBMISSIONS)) for i in range(OWNERS)
        ]
        # Mid-way through the submissions, the queue's process dies without a word; another takes over.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            submitted = read_jobs(tmp_path / "home")[0]
            if len(submitted) >= 15 and any(job.state == "running" for job in submitted):
                break
            time.sleep(0.05)
        runner.kill()
        runner.wait(timeout=30)
        replacement = start(RUNNER.format(**fill))
        assert replacement.stdout.readline().strip() == "running"
        reports = [json.loads(submitter.communicate(timeout=300)[0]) for submitter in submitters]

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            jobs, attempts = read_jobs(tmp_path / "home")
            if all(job.is_terminal for job in jobs):
                break
            time.sleep(0.5)
    finally:
        for process in (runner, replacement):
            if process is not None:
                process.kill()
                process.wait(timeout=30)

    accepted = sorted(job_id for report in reports for job_id in report["accepted"])
    assert [job.id for job in sorted(jobs, key=lambda job: job.id)] == accepted  # every one recorded
    assert len(accepted) == OWNERS * PER_DAY
    for report in reports:
        assert len(report["accepted"]) == PER_DAY
        assert len(report["refused"]) == SUBMISSIONS - PER_DAY
        assert all("queue.max_jobs_per_day = 8" in message for message in report["refused"])
        assert report["busy"]  # a submitter never becomes a second runner beside the live one

    assert [job.id for job in jobs if not job.is_terminal] == []
    owner_cancelled = {job_id for report in reports for job_id in report["cancelled"]}
    cancelled = {job.id for job in jobs if job.state == "cancelled"}
    assert cancelled == owner_cancelled
    assert all(job.cancel_requested_by == job.owner for job in jobs if job.state == "cancelled")
    assert {job.state for job in jobs if job.id not in cancelled} == {"succeeded"}
    outcomes = {attempt.outcome for job_attempts in attempts.values() for attempt in job_attempts}
    assert outcomes <= {"succeeded", "cancelled", "crashed"}
    cancelled_attempts = [a.job_id for rows in attempts.values() for a in rows if a.outcome == "cancelled"]
    assert set(cancelled_attempts) <= owner_cancelled
    # The replacement took over what the killed runner left running: resumed, not lost or cancelled.
    taken_over = [
        a
        for rows in attempts.values()
        for a in rows
        if a.detail == "the bot stopped while the job was running"
    ]
    assert taken_over and all(
        attempts[a.job_id][-1].outcome in ("succeeded", "cancelled") for a in taken_over
    )
