"""The job folder contract (protocol/job_folder.py) and the launch (protocol/launch.py): what the worker
writes is read back through the strict codec, records of earlier versions still read, and the worker's
command line carries where an attempt runs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from protocol.codec import to_dict
from protocol.errors import ProtocolError
from protocol.job_folder import (
    AdapterRecord,
    JobFolder,
    LossHistory,
    Metrics,
    TrainedSpec,
    read_loss_history,
    read_metrics,
    read_record,
    write_file,
)
from protocol.job_spec import DatasetSpec, JobSpec
from protocol.launch import Launch, parse_launch

SPEC = JobSpec(base_model="org/base", dataset=DatasetSpec(source="upload/dataset.jsonl", kind="upload"))
LAUNCH = Launch(
    job_dir="/d/jobs/3", cache_dir="/d/cache", resume_checkpoint="/d/jobs/3/checkpoints/checkpoint-4"
)


def test_what_the_worker_writes_reads_back(tmp_path: Path):
    folder = JobFolder(tmp_path)
    record = AdapterRecord(
        spec=TrainedSpec.of(SPEC, LAUNCH),
        data_format="messages",
        prompt_style="chat",
        chat_template_source="base model",
        runtime={"device": "cpu"},
    )
    metrics = Metrics(steps=4, tokens=400, final_loss=0.5)
    history = LossHistory.of([{"step": 1, "loss": 2.0, "lr": 1e-4}], [{"step": 1, "eval_loss": 1.5}])
    for path, content in ((folder.record, record), (folder.metrics, metrics), (folder.loss_history, history)):
        write_file(path, content)
    assert read_record(folder.adapter) == record
    assert read_metrics(tmp_path) == metrics and read_loss_history(tmp_path) == history
    saved = json.loads(folder.record.read_text())["spec"]
    assert (saved["output_dir"], saved["cache_dir"], saved["resume_from"]) == (
        "/d/jobs/3",
        "/d/cache",
        "/d/jobs/3/checkpoints/checkpoint-4",
    )
    assert read_record(tmp_path / "elsewhere") is None  # no record: a peft adapter made elsewhere


def test_a_record_of_an_earlier_version_reads(tmp_path: Path):
    """The first records: no runtime, no dataset kind or label, fewer training and limits fields."""
    spec = to_dict(SPEC)
    del spec["dataset"]["kind"], spec["dataset"]["label"], spec["training"]["fused_kernels"]
    del spec["limits"]["data_stage_memory_mb"]
    spec.update(
        output_dir="/d/jobs/1", cache_dir=None, training={**spec["training"], "gradient_checkpointing": True}
    )
    old = {"spec": spec, "data_format": "text", "prompt_style": "raw", "chat_template_source": "fallback"}
    (tmp_path / "qlora_bot.json").write_text(json.dumps(old))
    record = read_record(tmp_path)
    assert record.spec.base_model == "org/base" and record.spec.output_dir == "/d/jobs/1"
    assert record.prompt_style == "raw" and record.runtime == {}


def test_a_published_record_reads_back(tmp_path: Path):
    """What bot/hub/public_record.py publishes (no paths, no limits) is a record too: a download reads."""
    public = {
        "spec": {
            "base_model": "org/base",
            "name": "demo",
            "dataset": {"source": "dataset.jsonl", "split": "train"},
        },
        "data_format": "text",
        "prompt_style": "chat",
        "chat_template_source": "base model",
    }
    (tmp_path / "qlora_bot.json").write_text(json.dumps(public))
    assert read_record(tmp_path).spec.output_dir is None


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"prompt_style": "shout"}, "qlora_bot.json: prompt_style: must be one of"),
        ({"extra": 1}, "qlora_bot.json: extra: unknown key"),
        ({"spec": {"base_model": 3}}, "qlora_bot.json: spec.base_model: expected a string"),
    ],
)
def test_a_record_that_does_not_fit_is_refused_with_the_key(tmp_path: Path, change, problem):
    record = {"spec": {"base_model": "m", "dataset": {"source": "d"}}, "data_format": "text"}
    record.update({"prompt_style": "chat", "chat_template_source": "base model", **change})
    (tmp_path / "qlora_bot.json").write_text(json.dumps(record))
    with pytest.raises(ProtocolError, match=re.escape(problem)):
        read_record(tmp_path)
    (tmp_path / "metrics.json").write_text('{"steps": "4", "tokens": 1}')
    with pytest.raises(ProtocolError, match=r"metrics\.json: steps: expected an integer"):
        read_metrics(tmp_path)


def test_the_launch_travels_on_the_command_line():
    args = ["spec.json", *LAUNCH.argv()]
    assert parse_launch(args) == (LAUNCH, ["spec.json"])
    assert parse_launch(["spec.json", "dl", "--job-dir", "/j"]) == (Launch(job_dir="/j"), ["spec.json", "dl"])
    with pytest.raises(ProtocolError, match="needs --job-dir"):
        parse_launch(["spec.json"])
    with pytest.raises(ProtocolError, match="unknown worker option --output"):
        parse_launch(["spec.json", "--output", "/j"])
