"""Finished adapters a person can find and ask by name: `qlora-bot adapters`, the name scheme (NAME-JOBID,
the job id, a job name worn by one finished job only), `ask --adapter` refusals, the jobs list's error
column and --compare's labels. Jobs are recorded through the real store and the real outcome code
(bot/jobs/outcomes.py conclude) unless the test is about training; one test trains for real."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import Config, PathsConfig
from bot.jobs.asking import Question
from bot.jobs.local import open_service, terminal_requester
from bot.jobs.outcomes import conclude
from bot.jobs.requests import Requester
from protocol.errors import UserError
from protocol.events import Done, Error
from protocol.job_spec import DatasetSpec, JobSpec
from storage.store import Store
from tests.worker_helpers import worker_env, write_chat_dataset

BASE = "meta-llama/Llama-2-7b-hf"  # on the default allow-list, so Discord's asks may use it
OOM = "CUDA out of memory while training step 3: tried to allocate 2.00 GiB with 1.50 GiB free of 80 GiB"


def cli(*args: str, home: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**worker_env(), "QLORA_BOT_HOME": str(home)}
    return subprocess.run(
        [sys.executable, "-m", "bot.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


def config_for(home: Path) -> Config:
    return Config(paths=PathsConfig(data_dir=str(home)))


async def record_job(store: Store, home: Path, name: str, final: Done | Error, hub_url: str | None = None):
    """A job named `name` that ran and ended with `final`, as the runner records it; a Done's adapter
    folder exists."""
    job, _ = await store.create_job(
        owner="local:tester",
        name=name,
        spec=JobSpec(base_model=BASE, dataset=DatasetSpec(source="org/data"), name=name),
        jobs_dir=home / "jobs",
    )
    await store.start_job(job.id, slot="cpu", resumed_from=None)
    if isinstance(final, Done):
        final = Done(str(Path(job.folder) / "adapter"), final.metrics)
        (Path(final.adapter_dir)).mkdir(parents=True)
        (Path(final.adapter_dir) / "adapter_config.json").write_text("{}")
        await store.append_event(job.id, 1, final)
    ended = await conclude(store, job, final, stop_reason=None, max_attempts=3, max_wall_time_h=1.0)
    if hub_url is not None:
        ended = await store.set_hub_state(job.id, "pushed", url=hub_url, commit="abc123")
    return ended


def build(home: Path, *jobs: tuple) -> list:
    async def run() -> list:
        async with await Store.open(home / "qlora-bot.db", jobs_dir=home / "jobs") as store:
            return [await record_job(store, home, *job) for job in jobs]

    return asyncio.run(run())


def row_of(stdout: str, first: str) -> list[str]:
    return next(line.split() for line in stdout.splitlines() if line.split()[:1] == [first])


def test_adapters_lists_name_base_job_date_final_loss_and_hub_link(data_home):
    url = "https://huggingface.co/team/chat-2"
    one, two = build(
        data_home,
        ("guanaco", Done("", {"final_loss": 1.23456})),
        ("chat", Done("", {"final_loss": 0.5}), url),
    )
    result = cli("adapters", home=data_home)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["NAME", "BASE", "MODEL", "JOB", "CREATED", "LOSS", "HUB"]
    day = datetime.datetime.now().strftime("%Y-%m-%d")
    newest, older = row_of(result.stdout, f"chat-{two.id}"), row_of(result.stdout, f"guanaco-{one.id}")
    assert newest[:4] == [f"chat-{two.id}", BASE, str(two.id), day] and newest[5:] == ["0.5000", url]
    assert older[:4] == [f"guanaco-{one.id}", BASE, str(one.id), day] and older[5:] == ["1.2346"]
    assert lines[1].strip().startswith(f"chat-{two.id} ") and lines[2].strip().startswith(
        f"guanaco-{one.id} "
    )  # newest first
    assert "qlora-bot ask --adapter NAME" in result.stdout

    empty = cli("adapters", home=data_home / "other")
    assert empty.returncode == 0 and "no finished adapters yet" in empty.stdout


def test_two_jobs_with_one_name_get_distinct_names_and_each_resolves_to_its_own(data_home):
    first, second, lone = build(
        data_home, ("chat", Done("", {})), ("chat", Done("", {})), ("solo", Done("", {}))
    )
    names = [f"chat-{first.id}", f"chat-{second.id}"]

    async def resolve(reference: str, requester: Requester | None = None) -> str:
        requester = requester or terminal_requester()
        async with open_service(config_for(data_home)) as service:
            answering = await service.ask(Question("hi", reference), requester, client=None)
            return answering.adapter.path

    for job, name in ((first, names[0]), (second, names[1])):
        assert asyncio.run(resolve(name)) == job.adapter_path  # by the shown name
        assert asyncio.run(resolve(str(job.id))) == job.adapter_path  # by the job id alone
        discord = Requester("discord:7")  # Discord's asks take the same names and ids
        assert asyncio.run(resolve(str(job.id), discord)) == job.adapter_path
    assert asyncio.run(resolve("solo")) == lone.adapter_path  # a job name only one job carries
    with pytest.raises(UserError) as ambiguous:
        asyncio.run(resolve("chat"))
    assert f"{names[0]} (job {first.id})" in str(ambiguous.value)
    assert f"{names[1]} (job {second.id})" in str(ambiguous.value)

    listing = cli("jobs", "--all", home=data_home)  # the ADAPTER column shows the names ask takes
    assert row_of(listing.stdout, str(first.id))[:5] == [
        str(first.id),
        "chat",
        "succeeded",
        names[0],
        "local:tester",
    ]
    assert row_of(listing.stdout, str(second.id))[3] == names[1]
    details = cli("job", str(second.id), home=data_home)
    assert f"  ask it as   {names[1]}\n" in details.stdout


def test_ask_refuses_a_wrong_folder_an_unknown_name_and_a_job_without_adapter(data_home, tmp_path):
    done, failed = build(data_home, ("chat", Done("", {})), ("broken", Error("oom", OOM)))
    (tmp_path / "notes.txt").write_text("not an adapter")
    (tmp_path / "empty").mkdir()

    def refusal(adapter: str) -> str:
        result = cli("ask", "--adapter", adapter, "hi", home=data_home)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        return result.stderr.replace("\n", " ")

    missing = tmp_path / "nowhere" / "adapter"
    assert f"error: no such folder: {missing}" in refusal(str(missing))
    assert "no such folder: runs/a/typo" in refusal("runs/a/typo")  # no Hub id has two slashes
    assert f"not a folder: {tmp_path / 'notes.txt'}" in refusal(str(tmp_path / "notes.txt"))
    assert "holds no adapter (no adapter_config.json)" in refusal(str(tmp_path / "empty"))
    unknown = refusal("nope")
    assert "there is no adapter named 'nope'" in unknown
    assert f"adapters here: chat-{done.id}" in unknown and "qlora-bot adapters" in unknown
    assert f"job {failed.id} has no adapter: it is failed" in refusal(str(failed.id))


def test_jobs_shows_why_a_failed_job_failed(data_home):
    ok, broken = build(data_home, ("fine", Done("", {})), ("broken", Error("oom", OOM)))
    listing = cli("jobs", "--all", home=data_home)
    assert listing.returncode == 0, listing.stderr
    header = listing.stdout.splitlines()[0].split()
    assert header[-1] == "ERROR"
    line = next(line for line in listing.stdout.splitlines() if line.split()[:1] == [str(broken.id)])
    error = line[listing.stdout.splitlines()[0].index("ERROR") :].strip()
    assert error.startswith("oom: CUDA out of memory while training step 3") and error.endswith("…")
    assert len(error) <= 60
    assert "oom" not in " ".join(row_of(listing.stdout, str(ok.id)))  # a succeeded job has no error
    assert OOM in cli("job", str(broken.id), home=data_home).stdout  # the whole message is there


def test_a_trained_adapter_is_asked_by_the_name_train_shows_and_by_job_id_with_labelled_compare(
    tiny_model_dir, tmp_path, data_home
):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=16)
    flags = ("--base-model", str(tiny_model_dir), "--dataset", str(dataset), "--max-steps", "2")
    trained = cli(
        "train", *flags, "--max-length", "128", "--r", "4", "--name", "pal", home=data_home, timeout=300
    )
    assert trained.returncode == 0, trained.stderr
    assert 'ask it: qlora-bot ask --adapter pal-1 "your prompt" (or --adapter 1)' in trained.stderr
    listed = cli("adapters", home=data_home)
    assert row_of(listed.stdout, "pal-1")[:3] == ["pal-1", str(tiny_model_dir), "1"]

    by_name = cli("ask", "--adapter", "pal-1", "--max-new-tokens", "6", "hello", home=data_home, timeout=240)
    assert by_name.returncode == 0, by_name.stderr
    assert by_name.stdout.strip() and "---" not in by_name.stdout  # one answer: no labels
    compared = cli(
        "ask", "--adapter", "1", "--compare", "--max-new-tokens", "6", "hello", home=data_home, timeout=240
    )
    assert compared.returncode == 0, compared.stderr
    lines = compared.stdout.splitlines()
    assert lines[0] == "--- adapter pal-1 ---"  # each answer says whose it is, the adapter's first
    base_header = lines.index(f"--- base model ({tiny_model_dir}) ---")
    assert "\n".join(lines[1:base_header]).strip() and "\n".join(lines[base_header + 1 :]).strip()
