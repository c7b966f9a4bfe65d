"""The data check at submit time (bot/workers/data_check.py running trainer/data/check.py): refusals name
the person's own file and line, a check past its deadline or its memory cap is refused and its process
stopped, and a job's worker names an upload by the name it was given."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bot.jobs.executor import LocalExecutor
from bot.jobs.service import Requester
from bot.jobs.submission import Upload
from protocol.errors import UserError
from protocol.events import Phase
from protocol.job_spec import DatasetSpec, JobSpec
from tests.service_helpers import fake_data_checker, fake_spec, finished, open_service, shut
from tests.worker_helpers import tiny_spec, worker_env, write_chat_dataset

ALICE = Requester("local:alice")


def spec_for(source: str) -> JobSpec:
    dataset = DatasetSpec(source=source, kind="file")
    return JobSpec(base_model="fake/model", dataset=dataset, name="d")


async def test_a_broken_local_file_is_refused_with_its_line_and_no_job(tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text('{"text": "a"}\n{"text": "b"}\n{"text": \n')
    service = await open_service(tmp_path / "home")
    try:
        with pytest.raises(UserError) as refused:
            await service.submit(spec_for(str(data)), ALICE)
        assert refused.value.message.startswith("chats.jsonl line 3: not valid JSON")
        assert refused.value.hint
        assert await service.list() == []
    finally:
        await shut(service)


async def test_an_upload_is_checked_and_named_by_its_own_file_name(tmp_path):
    service = await open_service(tmp_path / "home")
    try:
        upload = Upload(suffix=".csv", data=b"text,other\nfine,1\nbroken\n", filename="../My Data.csv")
        with pytest.raises(UserError) as refused:
            await service.submit(spec_for("upload.csv"), ALICE, upload=upload)
        assert refused.value.message.startswith("My Data.csv line 3: 1 values but the header has 2 columns")
        assert await service.list() == []
        assert list((tmp_path / "home" / "jobs").glob("**/*.csv")) == []  # the staged upload is gone
    finally:
        await shut(service)


async def test_a_check_past_its_deadline_is_refused_and_its_process_stopped(tmp_path):
    service = await open_service(tmp_path / "home")
    service.data_checker = fake_data_checker(service.config, timeout_s=1.0)
    try:
        with pytest.raises(UserError) as refused:
            await service.submit(fake_spec("check_s=60"), ALICE)
        assert "took longer than 1 s (limits.data_check_timeout_s)" in refused.value.message
        assert await service.list() == []
        assert not _processes_running("fake_check_data")
    finally:
        await shut(service)


async def test_a_dataset_over_the_memory_cap_is_refused(tmp_path):
    data = tmp_path / "big.jsonl"
    row = json.dumps({"text": "x" * 1000}) + "\n"
    data.write_text(row * 200_000)  # ~200 MB: far more than the cap lets the check's process hold
    service = await open_service(tmp_path / "home")
    service.data_checker = fake_data_checker(service.config, memory_mb=150)
    try:
        with pytest.raises(UserError) as refused:
            await service.submit(spec_for(str(data)), ALICE)
        assert "needs more than 150 MiB of memory (limits.data_check_memory_mb)" in refused.value.message
        assert await service.list() == []
    finally:
        await shut(service)


async def test_a_good_file_gets_its_job(tmp_path):
    service = await open_service(tmp_path / "home")
    try:
        job = await service.submit(fake_spec("steps=1"), ALICE)
        assert (await finished(service, job.id)).state == "succeeded"
    finally:
        await shut(service)


async def test_the_worker_names_an_upload_by_the_name_it_was_given(tiny_model_dir, tmp_path):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=8)
    spec = tiny_spec(tiny_model_dir, Path("upload.jsonl"), max_steps=1).replace(name="named")
    service = await open_service(tmp_path / "home", executor=LocalExecutor(worker_env()))
    try:
        upload = Upload(suffix=".jsonl", data=dataset.read_bytes(), filename="team chats.jsonl")
        job = await service.submit(spec, ALICE, upload=upload)
        assert Path(job.spec.dataset.source).name == "dataset.jsonl"  # stored under a generated name
        assert job.spec.dataset.label == "team chats.jsonl"
        assert (await finished(service, job.id, timeout=180)).state == "succeeded"
        phases = [s.event for s in await service.events(job.id) if isinstance(s.event, Phase)]
        summary = next(p.message for p in phases if p.name == "validating" and p.message)
        assert summary.startswith("team chats.jsonl: format messages"), summary
    finally:
        await shut(service)


def _processes_running(name: str) -> bool:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and entry.name != str(os.getpid()):
            try:
                if name.encode() in (entry / "cmdline").read_bytes():
                    return True
            except OSError:
                continue
    return False
