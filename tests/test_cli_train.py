"""`qlora-bot train` as a person runs it: flags in, progress out, exit codes, Ctrl-C and --resume."""

from __future__ import annotations

import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from bot.cli.main import build_parser
from bot.cli.train import build_spec
from bot.config import Config, PathsConfig
from bot.jobs.executor import LocalExecutor
from bot.jobs.scheduler import build_slots
from bot.jobs.service import JobService, Requester
from protocol.events import Progress
from protocol.job_spec import DatasetSpec, JobSpec, TrainingSpec
from storage.store import Store
from tests.worker_helpers import worker_env, write_chat_dataset


def cli(*args: str, home: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**worker_env(), "QLORA_BOT_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def job_events(home: Path, job_id: int) -> list:
    async def read() -> list:
        async with await Store.open(home / "qlora-bot.db") as store:
            return [stored.event for stored in await store.events(job_id)]

    return asyncio.run(read())


def test_train_prints_where_the_adapter_is(tiny_model_dir, tmp_path, data_home):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=16)
    result = cli(
        "train",
        "--base-model",
        str(tiny_model_dir),
        "--dataset",
        str(dataset),
        "--max-steps",
        "2",
        "--max-length",
        "128",
        "--r",
        "4",
        "--lr",
        "1e-3",
        home=data_home,
    )
    assert result.returncode == 0, result.stderr
    jobs = list((data_home / "jobs").iterdir())
    assert [job.name for job in jobs] == ["1"]  # the job folder is named after the job id
    assert result.stdout.strip() == f"adapter: {jobs[0] / 'adapter'}"
    assert "job 1: folder" in result.stderr
    assert "done: 2 steps" in result.stderr and "final loss" in result.stderr
    spec = json.loads((jobs[0] / "spec.json").read_text())
    assert spec["lora"]["r"] == 4 and spec["training"]["max_steps"] == 2 and spec["name"] == "chat"
    assert (jobs[0] / "train.log").stat().st_size > 0

    # The terminal job is in the store like any other.
    listing = cli("jobs", home=data_home)
    assert listing.returncode == 0
    row = next(line for line in listing.stdout.splitlines() if line.strip().startswith("1 "))
    assert row.split()[:4] == ["1", "chat", "succeeded", "2/2"]
    details = cli("job", "1", home=data_home)
    assert details.returncode == 0
    assert f"  adapter     {jobs[0] / 'adapter'}\n" in details.stdout
    assert "attempt 1 on cpu: succeeded" in details.stdout
    assert "done: adapter in" in details.stdout
    log_tail = details.stdout.split("log (last lines):\n", 1)[1]  # the worker's own lines, no bars
    assert " INFO trainer.train: " in log_tail and "Loading weights" not in log_tail


def _refusal(result: subprocess.CompletedProcess) -> str:
    """The one stderr line that says why the database was refused; no traceback around it."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    [line] = [line for line in result.stderr.splitlines() if "job database" in line]
    assert "restore it from a backup" in line and "move it aside" in line
    return line


def test_a_corrupt_database_is_refused_in_one_line_by_every_command(tmp_path, data_home, monkeypatch):
    data_home.mkdir(parents=True)
    db = data_home / "qlora-bot.db"
    garbage = b"\x00\xffnot sqlite\x13" * 300
    db.write_bytes(garbage)
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=4)
    monkeypatch.setenv("DISCORD_TOKEN", "fake-bot-token-for-the-run-command")  # `run` opens the db first
    for command in (("jobs",), ("train", "--dataset", str(dataset), "--base-model", "tiny"), ("run",)):
        line = _refusal(cli(*command, home=data_home, timeout=60))
        assert line == (
            f"qlora-bot: the job database {db} is not a readable SQLite database (file is not a database); "
            f"restore it from a backup, or move it aside (with any qlora-bot.db-wal and -shm beside it) to "
            "start with an empty job list: the job folders are kept and new job ids continue above them"
        ), command
    assert db.read_bytes() == garbage


def test_an_empty_database_beside_job_folders_is_refused_and_moving_it_aside_starts_over(data_home):
    for job_id in (1, 2, 3):
        (data_home / "jobs" / str(job_id)).mkdir(parents=True)
        (data_home / "jobs" / str(job_id) / "spec.json").write_text("{}")
    db = data_home / "qlora-bot.db"
    db.write_bytes(b"")  # what a failed copy or a full disk leaves
    line = _refusal(cli("jobs", home=data_home, timeout=60))
    assert f"the job database {db} is empty (0 bytes) but job folders up to jobs/3 exist" in line
    assert db.stat().st_size == 0  # refused before SQLite touched it

    db.rename(data_home / "qlora-bot.db.broken")  # as the message advises
    listing = cli("jobs", home=data_home, timeout=60)
    assert listing.returncode == 0 and "no jobs" in listing.stdout

    async def next_id() -> int:
        async with await Store.open(db) as store:  # no jobs_dir: the sequence was seeded by `jobs`
            job, _ = await store.create_job(
                owner="local:x", name="n", spec=JobSpec("m", DatasetSpec("d")), jobs_dir=data_home / "jobs"
            )
            return job.id

    assert asyncio.run(next_id()) == 4


def test_job_commands_explain_unknown_ids(data_home):
    for command in (("job", "42"), ("cancel", "42")):
        result = cli(*command, home=data_home)
        assert result.returncode == 2
        assert "error: there is no job 42 (list jobs to find the id)" in result.stderr


def test_a_bad_dataset_exits_2_with_message_and_hint(tiny_model_dir, tmp_path, data_home):
    dataset = tmp_path / "pairs.jsonl"
    dataset.write_text('{"question": "q", "answer": "a"}\n')
    result = cli("train", "--base-model", str(tiny_model_dir), "--dataset", str(dataset), home=data_home)
    assert result.returncode == 2
    assert (
        "error: pairs.jsonl: cannot tell the dataset format from its columns (question, answer)"
        in result.stderr
    )
    assert "hint:" in result.stderr
    # Refused by the data check at submit time: no job was queued for it.
    assert "job 1" not in result.stderr and not (data_home / "jobs" / "1").exists()


def test_invalid_flags_are_refused_before_any_worker_starts(tmp_path, data_home):
    result = cli(
        "train", "--base-model", "x", "--dataset", "y.jsonl", "--lr", "-1", "--r", "0", home=data_home
    )
    assert result.returncode == 2
    assert (
        "--lr: must be a finite number > 0" in result.stderr
        and "--r: must be an integer >= 1" in result.stderr
    )
    assert not (data_home / "jobs").exists()


def test_checkpointing_and_memory_flags_reach_the_spec():
    def spec(*flags: str) -> TrainingSpec:
        args = build_parser().parse_args(["train", "--base-model", "m", "--dataset", "d", *flags])
        return build_spec(args, Config()).training

    assert spec().gradient_checkpointing == "auto" and spec().memory_limit_gib is None
    assert spec("--gradient-checkpointing", "on").gradient_checkpointing is True
    assert spec("--gradient-checkpointing", "off").gradient_checkpointing is False
    assert spec("--no-gradient-checkpointing").gradient_checkpointing is False
    assert spec("--memory-limit-gib", "16").memory_limit_gib == 16.0


def test_a_bad_config_file_is_refused_naming_the_key(tmp_path, data_home):
    config = tmp_path / "config.toml"
    config.write_text("[defaults.lora]\nrank = 8\n")
    result = cli("train", "--config", str(config), "--dataset", "y.jsonl", home=data_home)
    assert result.returncode == 2
    assert f"{config}: defaults.lora.rank: unknown key" in result.stderr


def test_ctrl_c_cancels_at_a_checkpoint_and_the_printed_command_resumes(tiny_model_dir, tmp_path, data_home):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=16)
    args = [
        "train",
        "--base-model",
        str(tiny_model_dir),
        "--dataset",
        str(dataset),
        "--max-steps",
        "60",
        "--max-length",
        "64",
        "--batch-size",
        "1",
        "--grad-accum",
        "1",
        "--checkpoint-steps",
        "1000",
        "--output",
        str(tmp_path / "job"),
    ]
    env = {**worker_env(), "QLORA_BOT_HOME": str(data_home)}
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        for line in process.stderr:
            if line.strip() == "Training":
                time.sleep(1.0)
                process.send_signal(signal.SIGINT)
                break
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 130, stderr
    assert "cancelling: the worker saves a checkpoint first" in stderr
    resume_line = stdout.strip().splitlines()[-1]
    command = shlex.split(resume_line)
    assert command[0] == "qlora-bot" and command[-2] == "--resume"
    checkpoint = Path(command[-1])
    assert (checkpoint / "trainer_state.json").is_file()
    saved_step = int(checkpoint.name.split("-")[-1])
    assert 0 < saved_step < 60

    assert "--output" not in command  # a resume is a new job in a folder of its own
    cancelled = json.loads((tmp_path / "job" / "spec.json").read_text())
    resumed = cli(*command[1:], home=data_home)
    assert resumed.returncode == 0, resumed.stderr
    resumed_dir = Path(resumed.stdout.strip().removeprefix("adapter: ")).parent
    assert resumed_dir != tmp_path / "job"
    metrics = json.loads((resumed_dir / "metrics.json").read_text())
    assert metrics["steps"] == 60
    history = json.loads((resumed_dir / "loss_history.json").read_text())
    assert [point["step"] for point in history["train"]] == list(range(1, 61))
    # It continued at the saved step: the worker's first step is the one after the checkpoint.
    events = job_events(data_home, int(resumed_dir.name))
    steps = [event.step for event in events if isinstance(event, Progress)]
    assert steps[0] == saved_step + 1, steps
    assert json.loads((resumed_dir / "spec.json").read_text())["lora"] == cancelled["lora"]


def test_cancel_a_queued_job_from_the_terminal(tmp_path, data_home):
    async def queue_one() -> int:
        async with await Store.open(data_home / "qlora-bot.db") as store:
            service = JobService(store, Config(paths=PathsConfig(data_dir=str(data_home))))
            dataset = DatasetSpec(source=str(write_chat_dataset(tmp_path / "d.jsonl", rows=2)), kind="file")
            job = await service.submit(
                JobSpec(base_model="m", dataset=dataset, name="waiting"),
                Requester("discord:5"),
            )
            return job.id

    job_id = asyncio.run(queue_one())
    listing = cli("jobs", "--all", home=data_home)
    row = next(line.split() for line in listing.stdout.splitlines() if line.split()[:1] == [str(job_id)])
    assert row[:7] == [str(job_id), "waiting", "queued", "#1,", "starts", "in", "~00:00"]
    result = cli("cancel", str(job_id), home=data_home)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"job {job_id} cancelled"
    assert "cancelled" in cli("job", str(job_id), home=data_home).stdout


def test_train_follows_a_job_that_another_process_runs(tiny_model_dir, tmp_path, data_home):
    """A bot (here: this test) holds the runner lock; the CLI submits, follows, and gets the result."""
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=16)

    async def run_queue_while_cli_trains() -> subprocess.CompletedProcess:
        config = Config(paths=PathsConfig(data_dir=str(data_home)))
        async with await Store.open(config.database_path()) as store:
            service = JobService(store, config)
            await service.start_runner(LocalExecutor(worker_env()), build_slots([], 1))
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bot.cli",
                    "train",
                    "--base-model",
                    str(tiny_model_dir),
                    "--dataset",
                    str(dataset),
                    "--max-steps",
                    "2",
                    "--max-length",
                    "128",
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env={**worker_env(), "QLORA_BOT_HOME": str(data_home)},
                )
                stdout, stderr = await asyncio.wait_for(process.communicate(), 240)
            finally:
                await service.close()
        return subprocess.CompletedProcess([], process.returncode, stdout.decode(), stderr.decode())

    result = asyncio.run(run_queue_while_cli_trains())
    assert result.returncode == 0, result.stderr
    assert f"qlora-bot (pid {os.getpid()}) runs the queue; job 1 runs there" in result.stderr
    assert result.stdout.strip() == f"adapter: {data_home / 'jobs' / '1' / 'adapter'}"
