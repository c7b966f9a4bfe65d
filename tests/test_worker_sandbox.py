"""Where workers run and what they see (bot/workers/environment.py and each spawner):
their own folder as the working directory, the Hub offline and no HF_TOKEN unless the job uses the Hub,
telemetry off, and every cache and temporary file under the data directory; and what the train worker
says of its job's files: their names in the job folder, not the server's path to them."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from bot.config import ServeConfig
from bot.jobs.asking import ResolvedAdapter, build_request
from bot.jobs.executor import LocalExecutor
from bot.jobs.scheduler import Slot
from bot.workers.environment import job_uses_hub, worker_environment
from bot.workers.serve_worker import ServeClient
from protocol.events import Done, Error, Started
from protocol.job_spec import DatasetSpec, JobSpec
from protocol.launch import Launch
from protocol.serve import Finished
from tests.service_helpers import FAKES
from tests.worker_helpers import run_worker, tiny_spec, worker_env, write_chat_dataset

CACHE_VARIABLES = (
    "HF_HOME",
    "HF_HUB_CACHE",
    "HF_DATASETS_CACHE",
    "TORCHINDUCTOR_CACHE_DIR",
    "TRITON_CACHE_DIR",
    "XDG_CACHE_HOME",
    "TMPDIR",
)


def files_under(root: Path, skip: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file() and skip not in path.parents}


def process_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


async def test_a_real_worker_runs_in_its_job_folder_offline_and_writes_only_under_the_data_dir(
    tiny_model_dir, tmp_path, monkeypatch
):
    """The bot's own HOME, TMPDIR and working directory are watched folders; the bot's environment even
    says the Hub is online and holds a token. The worker trains, and leaves no file outside the data
    directory; it ran in its job folder, offline, without the token, telemetry off."""
    home, temp, bot_cwd = (tmp_path / name for name in ("home", "tmp", "bot-cwd"))
    for folder in (home, temp, bot_cwd):
        folder.mkdir()
    monkeypatch.chdir(bot_cwd)
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=8)
    data_dir = tmp_path / "data"
    job_dir = data_dir / "jobs" / "1"
    spec = tiny_spec(tiny_model_dir, dataset, max_steps=1)
    launch = Launch(job_dir=str(job_dir), cache_dir=str(data_dir / "cache"))
    environ = {
        **worker_env(),
        "HOME": str(home),
        "TMPDIR": str(temp),
        "HF_TOKEN": "hf_secret_of_the_bot",
        "HF_HUB_OFFLINE": "0",
        "HF_DATASETS_OFFLINE": "0",
    }
    for name in (*CACHE_VARIABLES[:-1], "HF_HUB_DISABLE_TELEMETRY"):  # TMPDIR is the watched one
        environ.pop(name, None)
    before = files_under(tmp_path, data_dir)

    worker = await LocalExecutor(environ).launch(spec, launch, Slot("cpu", ""))
    seen, cwd, events = {}, None, []
    async for event in worker.events():
        events.append(event)
        if isinstance(event, Started):  # it imports torch next: time enough to look at the process
            seen, cwd = process_environment(event.pid), os.readlink(f"/proc/{event.pid}/cwd")
    await asyncio.wait_for(worker.process.wait(), 60)

    assert isinstance(events[-1], Done), events[-1]
    assert Path(cwd) == job_dir
    assert seen["HF_HUB_OFFLINE"] == "1" and seen["HF_DATASETS_OFFLINE"] == "1"
    assert seen["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert "HF_TOKEN" not in seen
    for name in CACHE_VARIABLES:
        assert Path(seen[name]).is_relative_to(data_dir / "cache"), (name, seen[name])
    assert files_under(tmp_path, data_dir) == before  # nothing in HOME, TMPDIR, the bot's folder or beside


def test_only_a_job_that_uses_the_hub_gets_the_hub_and_the_token(tmp_path):
    environ = {"PATH": "/usr/bin", "HF_TOKEN": "hf_secret", "HF_HUB_OFFLINE": "0", "DISCORD_TOKEN": "d"}
    folder = tmp_path / "model"
    folder.mkdir()

    def env_for(base_model: str, dataset: DatasetSpec) -> dict[str, str]:
        spec = JobSpec(base_model=base_model, dataset=dataset)
        return worker_environment(environ, hub_token=job_uses_hub(spec), cache_root=tmp_path / "cache")

    # An upload or a URL never uses the Hub, whatever its name looks like (an upload has an id's shape).
    for dataset in (
        DatasetSpec(source="upload/dataset.jsonl", kind="upload"),
        DatasetSpec(source="https://example.com/org/name.jsonl"),
        DatasetSpec(source="/data/org/name", kind="file"),
    ):
        offline = env_for(str(folder), dataset)
        assert offline["HF_HUB_OFFLINE"] == "1" and "HF_TOKEN" not in offline, dataset
        assert "DISCORD_TOKEN" not in offline and offline["HF_HUB_DISABLE_TELEMETRY"] == "1"
    for base_model, dataset in (
        (str(folder), DatasetSpec(source="org/name")),
        ("org/model", DatasetSpec(source="upload/dataset.jsonl", kind="upload")),
    ):
        online = env_for(base_model, dataset)
        assert online["HF_TOKEN"] == "hf_secret" and online["HF_HUB_OFFLINE"] == "0", (base_model, dataset)
        assert online["HF_HUB_DISABLE_TELEMETRY"] == "1" and "DISCORD_TOKEN" not in online


async def test_the_serve_worker_gets_hf_token_only_for_a_hub_base_model(tmp_path):
    """A local base model: the serve worker runs offline, without the token, in its own folder; an ask of a
    Hub base model restarts it with both (the fake worker answers with what it was given)."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    base = tmp_path / "base"
    base.mkdir()
    environ = {**worker_env(), "HF_TOKEN": "hf_secret", "HF_HUB_OFFLINE": "0"}
    environ["PYTHONPATH"] = f"{FAKES}:{environ['PYTHONPATH']}"
    work = tmp_path / "data" / "serve"
    client = ServeClient(
        ServeConfig(), tmp_path / "serve.log", environ=environ, module="fake_serve", work_dir=work
    )

    async def ask(base_model: str) -> str:
        resolved = ResolvedAdapter("a", str(adapter), base_model, "raw")
        request = build_request(resolved, "env:", ServeConfig(), max_new_tokens=4)
        async for event in client.generate(request):
            if isinstance(event, Finished):
                return event.text
        raise AssertionError("no answer")

    try:
        local = await ask(str(base))
        assert local == f"token=no offline=1 cwd={work}", local
        hub = await ask("org/base-model")
        assert hub == f"token=yes offline=0 cwd={work}", hub
        assert client.starts == 2
        assert await ask(str(base)) == hub and client.starts == 2  # no restart back: asks keep their models
    finally:
        await client.close()


def test_the_train_worker_names_the_files_of_its_job_relative_to_the_job_folder(tiny_model_dir, tmp_path):
    """An internal error about a file in the job folder (a checkpoint that is not there) and its hint (the
    log) name them inside the folder; the checkpoint field, for the bot, keeps the full path."""
    job_dir = tmp_path / "jobs" / "7"
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=8)
    missing = job_dir / "checkpoints" / "checkpoint-1"
    launch = Launch(job_dir=str(job_dir), resume_checkpoint=str(missing))
    events, code = run_worker(tiny_spec(tiny_model_dir, dataset), launch)
    error = events[-1]
    assert isinstance(error, Error) and error.kind == "internal" and code == 1, error
    assert error.message.endswith("Can't find a valid checkpoint at checkpoints/checkpoint-1"), error.message
    assert error.hint == "the full traceback is in train.log"
    assert str(tmp_path) not in error.message + error.hint and error.checkpoint == str(missing)
