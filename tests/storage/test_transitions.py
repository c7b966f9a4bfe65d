"""storage/transitions.py: the guarded job transitions and the attempts they open and close; a refused
transition changes nothing, and the CHECK constraints back the guards up."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from storage.store import Store
from tests.storage.helpers import FakeClock, new_job, running_job


async def test_start_job_runs_once_and_opens_one_attempt(store: Store, clock: FakeClock):
    job = await new_job(store)
    clock.advance(5)
    started = await store.start_job(job.id, slot="cuda:0", resumed_from=None)
    assert started is not None
    assert (started.state, started.started_at) == ("running", clock.now)
    assert await store.start_job(job.id, slot="cuda:1", resumed_from=None) is None
    await store.set_worker_pid(job.id, 1, 4242)
    [attempt] = await store.attempts(job.id)
    assert (attempt.number, attempt.slot, attempt.pid, attempt.outcome) == (1, "cuda:0", 4242, None)
    assert attempt.started_at == clock.now and attempt.finished_at is None


async def test_phase_and_checkpoint_only_while_running(store: Store):
    job = await new_job(store)
    assert await store.set_phase(job.id, "training") is None
    assert await store.record_checkpoint(job.id, "/ckpt-1") is None
    await store.start_job(job.id, slot="cpu", resumed_from=None)
    assert (await store.set_phase(job.id, "training")).phase == "training"
    assert (await store.record_checkpoint(job.id, "/ckpt-10")).checkpoint_path == "/ckpt-10"
    with pytest.raises(ValueError, match="unknown phase"):
        await store.set_phase(job.id, "dancing")
    done = await store.finish_job(job.id, "succeeded", adapter_path="/adapter")
    assert done.phase is None
    assert await store.set_phase(job.id, "saving") is None


async def test_success_closes_the_attempt(store: Store, clock: FakeClock):
    job = await running_job(store)
    clock.advance(30)
    done = await store.finish_job(job.id, "succeeded", adapter_path=f"/data/jobs/{job.id}/adapter")
    assert done is not None and done.is_terminal
    assert (done.state, done.finished_at, done.adapter_path) == (
        "succeeded",
        clock.now,
        f"/data/jobs/{job.id}/adapter",
    )
    [attempt] = await store.attempts(job.id)
    assert (attempt.outcome, attempt.finished_at) == ("succeeded", clock.now)


async def test_cancel_after_success_is_refused(store: Store):
    job = await running_job(store)
    await store.finish_job(job.id, "succeeded")
    assert await store.request_cancel(job.id, "discord:1") is None
    assert await store.finish_job(job.id, "cancelled") is None
    assert (await store.get_job(job.id)).state == "succeeded"


async def test_success_after_cancel_is_refused(store: Store):
    job = await running_job(store)
    cancelled = await store.finish_job(
        job.id, "cancelled", error_kind="cancelled", error_message="cancelled by discord:1"
    )
    assert cancelled.state == "cancelled"
    assert await store.finish_job(job.id, "succeeded", adapter_path="/adapter") is None
    after = await store.get_job(job.id)
    assert (after.state, after.adapter_path, after.error_kind) == ("cancelled", None, "cancelled")
    assert [attempt.outcome for attempt in await store.attempts(job.id)] == ["cancelled"]


async def test_a_queued_job_may_only_be_cancelled_or_failed(store: Store):
    job = await new_job(store)
    assert await store.finish_job(job.id, "succeeded") is None
    failed = await store.finish_job(
        job.id,
        "failed",
        error_kind="user_error",
        error_message="dataset not found",
        error_hint="check the id",
    )
    assert (failed.state, failed.error_kind, failed.error_hint) == ("failed", "user_error", "check the id")
    assert await store.attempts(job.id) == []  # it never ran

    other = await new_job(store)
    assert (await store.finish_job(other.id, "cancelled")).state == "cancelled"
    assert await store.start_job(other.id, slot="cpu", resumed_from=None) is None
    with pytest.raises(ValueError, match="terminal state"):
        await store.finish_job(other.id, "running")  # type: ignore[arg-type]


async def test_requeue_increments_the_attempt_and_records_resume_from(store: Store, clock: FakeClock):
    job = await running_job(store)
    await store.record_checkpoint(job.id, "/ckpt-50")
    clock.advance(10)
    requeued = await store.requeue_job(
        job.id, resume_from="/ckpt-50", outcome="crashed", detail="worker killed by signal SIGKILL"
    )
    assert (requeued.state, requeued.attempt, requeued.checkpoint_path) == ("queued", 2, "/ckpt-50")
    assert await store.requeue_job(job.id, resume_from=None, outcome="crashed", detail="again") is None

    restarted = await store.start_job(job.id, slot="cuda:0", resumed_from="/ckpt-50")
    assert restarted.attempt == 2
    await store.finish_job(job.id, "failed", error_kind="oom", attempt_outcome="failed", attempt_detail="OOM")
    first, second = await store.attempts(job.id)
    assert (first.number, first.outcome, first.detail, first.finished_at) == (
        1,
        "crashed",
        "worker killed by signal SIGKILL",
        clock.now,
    )
    assert (second.number, second.resumed_from, second.outcome, second.detail) == (
        2,
        "/ckpt-50",
        "failed",
        "OOM",
    )


async def test_the_first_cancel_request_wins(store: Store):
    job = await new_job(store, owner="discord:1")
    first = await store.request_cancel(job.id, "discord:1")
    second = await store.request_cancel(job.id, "system: shutting down")
    assert first.cancel_requested_by == second.cancel_requested_by == "discord:1"
    assert (await store.get_job(job.id)).state == "queued"  # a request is not a transition


async def test_hub_state_only_for_succeeded_jobs(store: Store):
    job = await running_job(store)
    assert await store.set_hub_state(job.id, "pushed", url="https://hf.co/x") is None
    await store.finish_job(job.id, "succeeded")
    failed = await store.set_hub_state(job.id, "push_failed", error="503 from the Hub")
    assert (failed.hub_state, failed.hub_error) == ("push_failed", "503 from the Hub")
    pushed = await store.set_hub_state(job.id, "pushed", url="https://hf.co/x", commit="abc123")
    assert (pushed.hub_state, pushed.hub_url, pushed.hub_error) == ("pushed", "https://hf.co/x", None)
    assert pushed.hub_commit == "abc123"


async def test_jobs_whose_requested_publish_never_ended(store: Store):
    asked, not_asked = await running_job(store, push_requested=True), await running_job(store)
    for job in (asked, not_asked):
        await store.finish_job(job.id, "succeeded")
    pending = await store.jobs_to_publish()
    assert [job.id for job in pending] == [asked.id] and pending[0].publish_pending
    await store.set_hub_state(asked.id, "push_failed", error="503")
    assert await store.jobs_to_publish() == []  # a failed publish waits for /push, not for a restart


async def test_the_check_constraint_backs_up_the_guards(store: Store, db_path: Path):
    job = await new_job(store)
    with sqlite3.connect(db_path) as db:
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db.execute("UPDATE jobs SET state = 'exploded' WHERE id = ?", (job.id,))
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            db.execute("UPDATE jobs SET hub_state = 'maybe' WHERE id = ?", (job.id,))
    assert (await store.get_job(job.id)).state == "queued"


async def test_an_unknown_attempt_outcome_is_refused(store: Store):
    job = await running_job(store)
    with pytest.raises(ValueError, match="unknown attempt outcome 'exploded'"):
        await store.requeue_job(job.id, resume_from=None, outcome="exploded", detail="x")
    assert (await store.get_job(job.id)).state == "running"  # the transaction rolled back
