"""bot/worker_process.py: spawn, read and signal workers, using fake workers that speak the protocol."""

from __future__ import annotations

import asyncio
import os
import textwrap
from pathlib import Path

import pytest

from bot.workers.environment import uses_hub, worker_environment
from bot.workers.train_worker import MAX_EVENT_LINE_BYTES, WorkerLost, WorkerProcess
from protocol.events import Done, Error, Progress, Started
from protocol.job_spec import DatasetSpec, JobSpec
from protocol.launch import Launch

PRELUDE = """
import json, os, signal, sys, time
def emit(**event):
    print(json.dumps({"v": 1, **event}), flush=True)
emit(type="started", pid=os.getpid())
"""

FAKES = {
    "fake_ok": """
emit(type="progress", step=1, total_steps=1, epoch=1.0, tokens_seen=10, tokens_per_s=5.0)
emit(type="done", adapter_dir="/tmp/adapter", metrics={"final_loss": 1.5})
""",
    "fake_garbage": """
print("Loading checkpoint shards: 100%", flush=True)
time.sleep(60)
""",
    "fake_oversized": """
sys.stdout.write("{" + "x" * (2 * 1024 * 1024) + "}\\n"); sys.stdout.flush()
time.sleep(60)
""",
    "fake_killed": """
os.kill(os.getpid(), signal.SIGKILL)
""",
    "fake_exit": """
sys.exit(7)
""",
    "fake_cancellable": """
def on_term(*_):
    emit(type="checkpoint", step=3, path="/tmp/ckpt-3")
    emit(type="error", kind="cancelled", message="cancelled", checkpoint="/tmp/ckpt-3")
    sys.exit(143)
signal.signal(signal.SIGTERM, on_term)
emit(type="phase", name="training")
while True:
    time.sleep(0.05)
""",
}


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    fakes = tmp_path / "fakes"
    fakes.mkdir()
    for name, body in FAKES.items():
        (fakes / f"{name}.py").write_text(textwrap.dedent(PRELUDE) + textwrap.dedent(body))
    return {**os.environ, "PYTHONPATH": str(fakes)}


async def collect(worker: WorkerProcess) -> list:
    return [event async for event in worker.events()]


async def start(tmp_path: Path, env: dict[str, str], module: str) -> WorkerProcess:
    spec_path = tmp_path / "spec.json"
    spec_path.write_text("{}")
    return await WorkerProcess.start(spec_path, [], tmp_path / "train.log", env, module=module)


async def test_events_are_read_in_order(tmp_path, fake_env):
    events = await asyncio.wait_for(collect(await start(tmp_path, fake_env, "fake_ok")), 30)
    assert [type(event) for event in events] == [Started, Progress, Done]
    assert events[-1].metrics == {"final_loss": 1.5}


@pytest.mark.parametrize(
    ("module", "message"),
    [
        ("fake_garbage", "the worker broke the event protocol (not a JSON event line"),
        ("fake_oversized", f"the worker sent an event line over {MAX_EVENT_LINE_BYTES} bytes"),
    ],
)
async def test_a_broken_worker_ends_with_an_internal_error(tmp_path, fake_env, module, message):
    worker = await start(tmp_path, fake_env, module)
    events = await asyncio.wait_for(collect(worker), 30)
    final = events[-1]
    assert isinstance(final, Error) and final.kind == "internal"
    assert final.message.startswith(message)
    assert str(tmp_path / "train.log") in final.hint
    assert worker.process.returncode is not None  # never left running


@pytest.mark.parametrize(
    ("module", "reason"), [("fake_killed", "killed by signal SIGKILL"), ("fake_exit", "exited with code 7")]
)
async def test_a_worker_that_dies_silently_is_lost_not_failed(tmp_path, fake_env, module, reason):
    events = await asyncio.wait_for(collect(await start(tmp_path, fake_env, module)), 30)
    assert events[-1] == WorkerLost(reason=reason, log_path=tmp_path / "train.log")
    assert events[-1].describe() == f"the worker {reason} without reporting a result"


async def test_terminate_lets_the_worker_checkpoint(tmp_path, fake_env):
    worker = await start(tmp_path, fake_env, "fake_cancellable")
    events = []
    async for event in worker.events():
        events.append(event)
        if getattr(event, "name", None) == "training":
            worker.terminate()
    assert events[-1] == Error(kind="cancelled", message="cancelled", checkpoint="/tmp/ckpt-3")
    assert worker.process.returncode == 143


def test_worker_environment_keeps_secrets_out():
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/u",
        "DISCORD_TOKEN": "discord-secret",
        "HF_TOKEN": "hf_secret",
        "HF_HOME": "/cache/hf",
        "AWS_SECRET_ACCESS_KEY": "aws",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    env = worker_environment(
        environ, hub_token=uses_hub("/models/llama", "/data/x.jsonl"), cuda_visible_devices="1"
    )
    assert "DISCORD_TOKEN" not in env and "HF_TOKEN" not in env and "AWS_SECRET_ACCESS_KEY" not in env
    assert env["HF_HOME"] == "/cache/hf" and env["PATH"] == "/usr/bin" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert uses_hub("meta-llama/Llama-2-7b-hf", "/data/x.jsonl") and not uses_hub(
        "/models/llama", "./x.jsonl"
    )
    assert uses_hub("/models/llama", "mlabonne/guanaco-llama2-1k")
    hub_env = worker_environment(environ, hub_token=True)
    assert hub_env["HF_TOKEN"] == "hf_secret" and "DISCORD_TOKEN" not in hub_env


async def test_stop_orphan_stops_only_our_own_worker(tmp_path, fake_env):
    from bot.jobs.executor import LocalExecutor
    from bot.jobs.scheduler import Slot

    executor = LocalExecutor(fake_env, module="fake_cancellable")
    spec = JobSpec(base_model="m", dataset=DatasetSpec(source="d"))
    worker = await executor.launch(spec, Launch(job_dir=str(tmp_path / "job")), Slot("cpu", ""))
    events = worker.events()
    while getattr(await anext(events), "name", None) != "training":  # its SIGTERM handler is installed
        pass
    other = tmp_path / "other"
    assert not await executor.stop_orphan(other, worker.pid, grace_s=5)  # a pid that is not this job's
    assert not await executor.stop_orphan(tmp_path / "job", None, grace_s=5)
    assert await executor.stop_orphan(tmp_path / "job", worker.pid, grace_s=5)
    await asyncio.wait_for(worker.process.wait(), 10)
    assert worker.process.returncode == 143  # it got SIGTERM first and exited cleanly
