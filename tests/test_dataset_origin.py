"""Where a dataset may come from (DatasetSpec.kind), as the worker's reader enforces it: a Hub id is read
from the Hub and never from a local file or folder of that name, an upload only from inside its job
folder; the training worker and the data check refuse what does not fit."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.errors import UserError
from protocol.events import Error, Phase, decode_event
from protocol.job_spec import DatasetSpec, Limits
from protocol.launch import Launch
from tests.test_data_sources import no_remote_network, offline_hub  # noqa: F401 - the fixtures
from tests.worker_helpers import tiny_spec, worker_command, worker_env, write_chat_dataset
from trainer.data.sources import read_records

OFFLINE_HUB = "not found on the Hub or not reachable"


def local_lookalikes(folder: Path) -> None:
    """Data the reader must never pick up for a Hub id: an org/name folder of data files, a file named
    like a bare id."""
    (folder / "someorg" / "notes").mkdir(parents=True)
    (folder / "someorg" / "notes" / "train.jsonl").write_text('{"text": "secret"}\n')
    (folder / "private").write_text('{"text": "secret"}\n')


def read_error(spec: DatasetSpec, tmp_path: Path, job_dir: Path | None = None) -> UserError:
    where = {"job_dir": job_dir} if job_dir is not None else {}  # only uploads are read from a job folder
    with pytest.raises(UserError) as caught:
        read_records(spec, tmp_path / "downloads", Limits(), **where)
    return caught.value


@pytest.mark.usefixtures("offline_hub")
@pytest.mark.parametrize("name", ["someorg/notes", "private"])
def test_a_hub_id_matching_a_local_folder_or_file_is_read_from_the_hub_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    local_lookalikes(tmp_path)
    monkeypatch.chdir(tmp_path)  # where the worker runs: the names resolve here
    error = read_error(DatasetSpec(source=name), tmp_path)
    assert error.message.startswith(f"dataset {name} {OFFLINE_HUB} ("), error.message
    assert "secret" not in error.message and "text" not in error.message


@pytest.mark.parametrize(
    "source", ["../outside.jsonl", "/etc/passwd", "upload/../../outside.jsonl", "link.jsonl"]
)
def test_an_upload_is_read_from_inside_its_job_folder_only(tmp_path: Path, source: str) -> None:
    job_dir = tmp_path / "jobs" / "1"
    (job_dir / "upload").mkdir(parents=True)
    outside = tmp_path / "jobs" / "outside.jsonl"
    outside.write_text('{"text": "not this job\'s"}\n')
    (job_dir / "link.jsonl").symlink_to(outside)
    error = read_error(DatasetSpec(source=source, kind="upload", label="mine.jsonl"), tmp_path, job_dir)
    assert "an upload must lie inside the job folder" in error.message, error.message
    (job_dir / "upload" / "dataset.jsonl").write_text('{"text": "mine"}\n')
    spec = DatasetSpec(source="upload/dataset.jsonl", kind="upload", label="mine.jsonl")
    records = read_records(spec, tmp_path / "downloads", Limits(), job_dir=job_dir)
    assert records.rows == [{"text": "mine"}] and records.where(0) == "mine.jsonl line 1"


def test_the_training_worker_reads_a_hub_id_from_the_hub_even_beside_a_folder_of_that_name(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The real worker, in its job folder (as the executor starts it) where a folder someorg/notes of
    valid chats lies: it reports the Hub unreachable (tests are offline) instead of training on them."""
    job_dir = tmp_path / "job"
    local_lookalikes(job_dir)
    write_chat_dataset(job_dir / "someorg" / "notes" / "train.jsonl", rows=8)
    spec = tiny_spec(tiny_model_dir, Path("unused"), max_steps=1)
    spec = spec.replace(dataset=DatasetSpec(source="someorg/notes"))
    env = {**worker_env(), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run(
        worker_command(spec, Launch(job_dir=str(job_dir))),
        capture_output=True,
        text=True,
        env=env,
        cwd=job_dir,
        timeout=240,
    )
    events = [decode_event(line) for line in result.stdout.splitlines() if line.strip()]
    assert not any(isinstance(e, Phase) and e.message for e in events), "it read rows from somewhere"
    error = events[-1]
    assert isinstance(error, Error) and error.kind == "user_error", error
    assert error.message.startswith(f"dataset someorg/notes {OFFLINE_HUB}"), error.message
    assert result.returncode == 2


def test_the_data_check_refuses_a_source_that_does_not_fit_its_kind(tmp_path: Path) -> None:
    spec = tiny_spec(Path("m"), Path("x"), max_steps=1)
    for dataset, problem in (
        (DatasetSpec(source="../secrets/x.jsonl"), "is not a Hub dataset id"),
        (DatasetSpec(source="/etc/passwd", kind="upload"), "an upload is named by its place"),
        (DatasetSpec(source="notes.txt", kind="url"), "is not a URL"),
    ):
        (tmp_path / "spec.json").write_text(spec.replace(dataset=dataset).to_json())
        result = subprocess.run(
            [
                *(
                    sys.executable,
                    "-m",
                    "trainer.data.check",
                    str(tmp_path / "spec.json"),
                    str(tmp_path / "dl"),
                ),
                *Launch(job_dir=str(tmp_path)).argv(),
            ],
            capture_output=True,
            text=True,
            env=worker_env(),
            cwd=tmp_path,
            timeout=120,
        )
        answer = json.loads(result.stdout)
        assert answer["type"] == "error" and answer["kind"] == "user_error", answer
        assert problem in answer["message"] and answer["message"].startswith("invalid dataset: "), answer
