"""bot/jobs: the JobService, runner and recovery with a fake trainer speaking the real protocol."""

from __future__ import annotations

import pytest

from bot.jobs.service import Requester
from protocol.errors import UserError
from protocol.events import Checkpoint, Done, Phase, Progress, Started
from tests.service_helpers import fake_spec, finished, open_service, shut, wait_until

ALICE, BOB = Requester("discord:1"), Requester("discord:2")
ADMIN = Requester("discord:99", is_admin=True)


async def test_a_job_runs_and_every_event_is_stored(tmp_path):
    service = await open_service(tmp_path)
    try:
        job = await service.submit(fake_spec("steps=4"), ALICE, channel_id=7)
        assert job.state == "queued" and job.folder == str(tmp_path / "jobs" / str(job.id))
        updates = [update async for update in service.subscribe(job.id)]
        done = await service.get(job.id)
        assert done.state == "succeeded" and done.adapter_path == f"{done.folder}/adapter"
        events = [stored.event for stored in await service.events(job.id)]
        assert isinstance(events[0], Started) and isinstance(events[-1], Done)
        assert [e.step for e in events if isinstance(e, Progress)] == [1, 2, 3, 4]
        assert [e.step for e in events if isinstance(e, Checkpoint)] == [2, 4]
        # The watcher saw every event in order, and the final state.
        assert [u.event for u in updates if u.event is not None] == events
        assert updates[-1].job.state == "succeeded"
        adapter = await service.store.adapter(f"demo-{job.id}")
        assert adapter is not None and adapter.path == done.adapter_path
    finally:
        await shut(service)


async def test_a_job_is_never_placed_in_a_folder_that_holds_files(tmp_path):
    service = await open_service(tmp_path)
    await service.close()  # no runner: jobs stay queued
    try:
        (tmp_path / "jobs" / "1").mkdir(parents=True)  # an empty folder is harmless
        assert (await service.submit(fake_spec("steps=1"), ALICE)).id == 1
        leftover = tmp_path / "jobs" / "2"
        leftover.mkdir()
        (leftover / "train.log").write_text("an earlier job 2's log\n")  # appeared after the store opened
        with pytest.raises(UserError, match=f"job folder {leftover} already exists") as refused:
            await service.submit(fake_spec("steps=1"), ALICE)
        assert "restart qlora-bot" in refused.value.hint
        assert [job.id for job in await service.list()] == [1]  # nothing was created
        assert (leftover / "train.log").read_text() == "an earlier job 2's log\n"
    finally:
        await shut(service)


async def test_one_idempotency_key_makes_one_job(tmp_path):
    service = await open_service(tmp_path)
    try:
        first = await service.submit(fake_spec("steps=1"), ALICE, idempotency_key="interaction-1")
        again = await service.submit(fake_spec("steps=1"), ALICE, idempotency_key="interaction-1")
        assert again.id == first.id
        assert len(await service.list()) == 1
    finally:
        await shut(service)


async def test_quotas_name_the_limit_and_admins_bypass_them(tmp_path):
    service = await open_service(tmp_path, max_queued_per_user=2, max_jobs_per_day=3)
    await service.close()  # no runner: jobs stay queued
    try:
        await service.submit(fake_spec(), ALICE)
        await service.submit(fake_spec(), ALICE)
        with pytest.raises(UserError, match=r"2 jobs waiting \(limit queue.max_queued_per_user = 2\)"):
            await service.submit(fake_spec(), ALICE)
        await service.submit(fake_spec(), ADMIN)
        await service.submit(fake_spec(), ADMIN)
        await service.submit(fake_spec(), ADMIN)
        for job in await service.list(owner=ALICE.owner):
            await service.cancel(job.id, ALICE)
        await service.submit(fake_spec(), ALICE)
        with pytest.raises(
            UserError, match=r"3 jobs in the last 24 hours \(limit queue.max_jobs_per_day = 3\)"
        ):
            await service.submit(fake_spec(), ALICE)
    finally:
        await shut(service)


async def test_invalid_settings_are_refused_naming_the_field(tmp_path):
    service = await open_service(tmp_path)
    try:
        spec = fake_spec()
        bad = spec.replace(lora=spec.lora.__class__(r=0))
        with pytest.raises(UserError, match=r"lora\.r: must be an integer >= 1"):
            await service.submit(bad, ALICE)
    finally:
        await shut(service)


async def test_two_peoples_jobs_interleave_and_the_queue_has_positions(tmp_path):
    service = await open_service(tmp_path)
    await service.close()  # fill the queue first, then run it
    a1, a2, a3 = [
        await service.submit(fake_spec("steps=2;step_s=0.05", name=f"a{i}"), ALICE) for i in (1, 2, 3)
    ]
    b1 = await service.submit(fake_spec("steps=2;step_s=0.05", name="b1"), BOB)
    queue = await service.queue()
    assert [(entry.job.id, entry.position) for entry in queue] == [
        (a1.id, 1),
        (b1.id, 2),
        (a2.id, 3),
        (a3.id, 4),
    ]
    etas = [entry.eta_s for entry in queue]
    assert etas[0] == 0 and etas == sorted(etas) and etas[1] > 0
    await service.store.close()
    service = await open_service(tmp_path)
    try:
        for job in (a1, a2, a3, b1):
            assert (await finished(service, job.id)).state == "succeeded"
        starts = {job.id: (await service.store.attempts(job.id))[0].started_at for job in (a1, a2, a3, b1)}
        assert sorted(starts, key=starts.get) == [a1.id, b1.id, a2.id, a3.id]
    finally:
        await shut(service)


@pytest.mark.parametrize("kind", ["oom", "user_error", "internal"])
async def test_a_reported_failure_fails_the_job_with_its_message(tmp_path, kind):
    service = await open_service(tmp_path)
    try:
        job = await service.submit(fake_spec(f"steps=4;fail_at=2;fail_kind={kind}"), ALICE)
        ended = await finished(service, job.id)
        assert (ended.state, ended.error_kind, ended.error_message, ended.error_hint) == (
            "failed",
            kind,
            "fake failure",
            "fake hint",
        )
        assert len(await service.store.attempts(job.id)) == 1  # a verdict is not retried
    finally:
        await shut(service)


async def test_cancel_a_running_job_keeps_its_checkpoint(tmp_path):
    service = await open_service(tmp_path)
    try:
        job = await service.submit(fake_spec("steps=500;step_s=0.02", checkpoint_steps=1000), ALICE)
        await wait_until(lambda: service.store.last_event(job.id, "progress"))
        with pytest.raises(UserError, match="is not yours"):
            await service.cancel(job.id, BOB)
        await service.cancel(job.id, ALICE)
        ended = await finished(service, job.id)
        assert ended.state == "cancelled" and ended.error_message == "cancelled"
        assert ended.cancel_requested_by == "discord:1" and not ended.error_hint  # no path in the message
        checkpoint = await service.store.last_event(job.id, "checkpoint")
        assert checkpoint is not None and ended.checkpoint_path == checkpoint.event.path
        with pytest.raises(UserError, match="already ended"):
            await service.cancel(job.id, ALICE)
    finally:
        await shut(service)


async def test_cancel_a_queued_job_is_immediate_and_admins_may_cancel_any(tmp_path):
    service = await open_service(tmp_path)
    await service.close()
    try:
        job = await service.submit(fake_spec(), ALICE)
        cancelled = await service.cancel(job.id, ADMIN)
        assert cancelled.state == "cancelled" and cancelled.error_message == "cancelled"
        assert cancelled.cancel_requested_by == "discord:99"
    finally:
        await shut(service)


async def test_a_worker_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    service = await open_service(tmp_path)
    service.runner.worker_config = service.runner.worker_config.__class__(cancel_grace_s=0.5)
    try:
        job = await service.submit(fake_spec("steps=500;step_s=0.02;ignore_sigterm=1"), ALICE)
        await wait_until(lambda: service.store.last_event(job.id, "progress"))
        await service.cancel(job.id, ALICE)
        ended = await finished(service, job.id, timeout=20)
        assert ended.state == "cancelled"
        attempt = (await service.store.attempts(job.id))[-1]
        assert attempt.outcome == "cancelled"
    finally:
        await shut(service)


async def test_the_wall_time_limit_cancels_with_a_clear_reason(tmp_path):
    service = await open_service(tmp_path, max_wall_time_h=1.0 / 3600)  # one second
    try:
        job = await service.submit(fake_spec("steps=500;step_s=0.02"), ALICE)
        ended = await finished(service, job.id)
        assert ended.state == "cancelled"
        assert (
            ended.error_message
            == "stopped after the maximum run time of 0.000277778 h (queue.max_wall_time_h)"
        )
    finally:
        await shut(service)


async def test_a_crashed_worker_resumes_from_its_checkpoint_and_keeps_every_event(tmp_path):
    service = await open_service(tmp_path)
    try:
        job = await service.submit(fake_spec("steps=6;crash_once_at=5"), ALICE)
        ended = await finished(service, job.id)
        assert ended.state == "succeeded" and ended.attempt == 2
        attempts = await service.store.attempts(job.id)
        assert [a.outcome for a in attempts] == ["crashed", "succeeded"]
        assert attempts[0].detail == "the worker killed by signal SIGKILL without reporting a result"
        assert attempts[1].resumed_from.endswith("checkpoint-4")
        stored = await service.events(job.id)
        steps = [(s.attempt, s.event.step) for s in stored if isinstance(s.event, Progress)]
        assert steps == [(1, 1), (1, 2), (1, 3), (1, 4), (2, 5), (2, 6)]
        second_start = next(s.event for s in stored if s.attempt == 2 and isinstance(s.event, Started))
        assert second_start.attempt_resumes_from == attempts[1].resumed_from
    finally:
        await shut(service)


async def test_a_job_that_keeps_crashing_fails_after_max_attempts(tmp_path):
    service = await open_service(tmp_path, max_attempts=2)
    try:
        job = await service.submit(fake_spec("steps=4;crash_at=1"), ALICE)
        ended = await finished(service, job.id)
        assert ended.state == "failed" and ended.error_kind == "internal"
        assert ended.error_message.startswith("the job crashed 2 times (queue.max_attempts = 2)")
        assert [a.outcome for a in await service.store.attempts(job.id)] == ["crashed", "crashed"]
    finally:
        await shut(service)


@pytest.mark.parametrize(
    ("behaviour", "message"),
    [
        ("garbage_at=2", "the worker broke the event protocol"),
        ("oversize_at=2", "the worker sent an event line over"),
    ],
)
async def test_a_worker_breaking_the_protocol_fails_its_job_and_the_service_goes_on(
    tmp_path, behaviour, message
):
    service = await open_service(tmp_path)
    try:
        broken = await service.submit(fake_spec(f"steps=4;{behaviour}"), ALICE)
        healthy = await service.submit(fake_spec("steps=2"), ADMIN)
        ended = await finished(service, broken.id)
        assert (
            ended.state == "failed"
            and ended.error_kind == "internal"
            and ended.error_message.startswith(message)
        )
        assert (await finished(service, healthy.id)).state == "succeeded"
    finally:
        await shut(service)


async def test_closing_the_service_requeues_and_a_new_one_finishes(tmp_path):
    service = await open_service(tmp_path)
    job = await service.submit(fake_spec("steps=40;step_s=0.05", checkpoint_steps=1000), ALICE)
    await wait_until(lambda: service.store.last_event(job.id, "progress"))
    await shut(service)
    stopped = None
    service = await open_service(tmp_path)
    try:
        ended = await finished(service, job.id)
        assert ended.state == "succeeded"
        attempts = await service.store.attempts(job.id)
        stopped = attempts[0]
        assert (stopped.outcome, stopped.detail) == ("stopped", "the job runner stopped")
        assert attempts[1].resumed_from is not None  # the checkpoint written on SIGTERM
        phases = [s.event.name for s in await service.events(job.id) if isinstance(s.event, Phase)]
        assert phases.count("training") == 2
    finally:
        await shut(service)
