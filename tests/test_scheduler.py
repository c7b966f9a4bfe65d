"""bot/jobs/scheduler.py: fairness between people, running limits, slots and queue ETAs."""

from __future__ import annotations

import subprocess

from bot.jobs.scheduler import Slot, build_slots, detect_gpus, estimate_queue, fair_order, jobs_to_start
from protocol.job_spec import DatasetSpec, JobSpec
from storage.models import Job

SPEC = JobSpec(base_model="m", dataset=DatasetSpec(source="d.jsonl"))


def job(job_id: int, owner: str, state: str = "queued") -> Job:
    return Job(
        id=job_id,
        owner=owner,
        name=f"j{job_id}",
        spec=SPEC,
        folder="/jobs/x",
        state=state,
        phase=None,
        attempt=1,
        created_at=float(job_id),
        started_at=None,
        finished_at=None,
        guild_id=None,
        channel_id=None,
        status_message_id=None,
        completion_message_id=None,
        idempotency_key=None,
        cancel_requested_by=None,
        error_kind=None,
        error_message=None,
        error_hint=None,
        checkpoint_path=None,
        adapter_path=None,
        hub_state="none",
        hub_url=None,
        hub_error=None,
        push_requested=False,
        hub_private=True,
    )


def ids(jobs: list[Job]) -> list[int]:
    return [j.id for j in jobs]


def test_people_take_turns_whoever_submitted_first():
    queued = [job(1, "a"), job(2, "a"), job(3, "a"), job(4, "b"), job(5, "c")]
    assert ids(fair_order(queued, running=[])) == [1, 4, 5, 2, 3]


def test_whoever_was_served_longest_ago_goes_first():
    queued = [job(1, "a"), job(2, "b")]
    assert ids(fair_order(queued, [], last_started={"a": 100.0, "b": 200.0})) == [1, 2]
    assert ids(fair_order(queued, [], last_started={"a": 300.0, "b": 200.0})) == [2, 1]
    assert ids(fair_order(queued, [], last_started={"a": 300.0})) == [2, 1]  # never served: first


def test_someone_running_waits_behind_everyone_else():
    queued = [job(2, "a"), job(3, "b")]
    assert ids(fair_order(queued, running=[job(1, "a", "running")])) == [3, 2]


def test_jobs_to_start_fills_free_slots_within_the_running_limit():
    queued = [job(2, "a"), job(3, "a"), job(4, "b")]
    running = [job(1, "a", "running")]
    assert ids(jobs_to_start(queued, running, free_slots=2, max_running_per_user=1)) == [4]
    assert ids(jobs_to_start(queued, running, free_slots=2, max_running_per_user=2)) == [4, 2]
    assert ids(jobs_to_start(queued, running, free_slots=0, max_running_per_user=5)) == []


def test_queue_estimates_follow_the_slots():
    queued = [job(3, "a"), job(4, "b"), job(5, "c")]
    running = [job(1, "x", "running"), job(2, "y", "running")]
    entries = estimate_queue(queued, running, {1: 100.0, 2: 400.0}, slot_count=2, job_estimate_s=600.0)
    assert [(e.job.id, e.position, e.eta_s) for e in entries] == [(3, 1, 100.0), (4, 2, 400.0), (5, 3, 700.0)]
    idle = estimate_queue(queued[:1], [], {}, slot_count=1, job_estimate_s=600.0)
    assert idle[0].eta_s == 0.0


def test_slots_per_gpu_and_the_cpu_fallback():
    assert build_slots([], 1) == [Slot("cpu", "")]
    assert build_slots(["0", "1"], 1) == [Slot("cuda:0", "0"), Slot("cuda:1", "1")]
    assert [slot.name for slot in build_slots(["0"], 2)] == ["cuda:0#1", "cuda:0#2"]


def test_detect_gpus_reads_nvidia_smi(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: "/usr/bin/nvidia-smi")

    def fake_run(command, **kwargs):
        assert command[0] == "nvidia-smi"
        return subprocess.CompletedProcess(command, 0, stdout="0\n1\n", stderr="")

    assert detect_gpus(fake_run) == ["0", "1"]
    failing = lambda command, **kwargs: subprocess.CompletedProcess(command, 9, "", "no driver")  # noqa: E731
    assert detect_gpus(failing) == []
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert detect_gpus(fake_run) == []
