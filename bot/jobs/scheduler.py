"""Who runs next and when: fair order between people, GPU slots, queue positions and ETAs.

Pure functions over jobs, so the policy is easy to read and to test. Fairness is round-robin between
people: the next job belongs to whoever has the fewest jobs running, then whoever was served longest
ago (never served first), oldest job first on a tie; so one person's ten jobs interleave with everyone
else's instead of filling the GPU.
"""

from __future__ import annotations

import heapq
import math
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from storage.models import Job

# Larger than any real start time: a person picked in this round waits behind everyone else.
PICKED_NOW = 1e18


@dataclass(frozen=True)
class Slot:
    """One place a job can run: a share of one GPU, or the CPU."""

    name: str  # "cuda:0", "cuda:0#2" when a GPU is shared, or "cpu"
    cuda_visible_devices: str  # what the worker sees; "" hides every GPU


@dataclass(frozen=True)
class QueueEntry:
    job: Job
    position: int  # 1 is next
    eta_s: float  # expected wait before it starts


def build_slots(devices: Sequence[str], jobs_per_device: int) -> list[Slot]:
    if not devices:
        return [Slot(name="cpu", cuda_visible_devices="")]
    slots = []
    for device in devices:
        for share in range(jobs_per_device):
            suffix = f"#{share + 1}" if jobs_per_device > 1 else ""
            slots.append(Slot(name=f"cuda:{device}{suffix}", cuda_visible_devices=device))
    return slots


def detect_gpus(run: Callable[..., subprocess.CompletedProcess] = subprocess.run) -> list[str]:
    """GPU indices from nvidia-smi, without importing torch into the bot process."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        result = run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if result.returncode != 0:
        return []
    return [line.strip() for line in result.stdout.splitlines() if line.strip().isdigit()]


def fair_order(
    queued: Sequence[Job], running: Sequence[Job], last_started: Mapping[str, float] | None = None
) -> list[Job]:
    """The order queued jobs would start in if slots freed one at a time."""
    active = Counter(job.owner for job in running)
    served = dict(last_started or {})
    waiting = sorted(queued, key=lambda job: job.id)
    order = []
    for turn in range(len(waiting)):
        chosen = min(waiting, key=lambda job: (active[job.owner], served.get(job.owner, -math.inf), job.id))
        waiting.remove(chosen)
        active[chosen.owner] += 1
        served[chosen.owner] = PICKED_NOW + turn  # served now: behind everyone still waiting
        order.append(chosen)
    return order


def jobs_to_start(
    queued: Sequence[Job],
    running: Sequence[Job],
    free_slots: int,
    max_running_per_user: int,
    last_started: Mapping[str, float] | None = None,
) -> list[Job]:
    """The next jobs for the free slots, skipping people already at their running limit."""
    active = Counter(job.owner for job in running)
    picked = []
    for job in fair_order(queued, running, last_started):
        if len(picked) == free_slots:
            break
        if active[job.owner] >= max_running_per_user:
            continue
        active[job.owner] += 1
        picked.append(job)
    return picked


def estimate_queue(
    queued: Sequence[Job],
    running: Sequence[Job],
    remaining_s: dict[int, float],
    slot_count: int,
    job_estimate_s: float,
    last_started: Mapping[str, float] | None = None,
) -> list[QueueEntry]:
    """Queue position and expected wait of every queued job, simulating the slots freeing up."""
    free_at = [remaining_s.get(job.id, job_estimate_s) for job in running]
    free_at += [0.0] * max(slot_count - len(free_at), 0)
    heapq.heapify(free_at)
    entries = []
    for position, job in enumerate(fair_order(queued, running, last_started), start=1):
        start = heapq.heappop(free_at) if free_at else 0.0
        heapq.heappush(free_at, start + job_estimate_s)
        entries.append(QueueEntry(job=job, position=position, eta_s=start))
    return entries
