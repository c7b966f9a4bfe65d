"""A small hostile file must not exhaust the host: the real training worker and the real data check on
crafted files fail with a user error naming the file and line, and their peak RSS stays bounded.

Each process runs under a 1 GiB RLIMIT_DATA guard of the test's own, so even a regression cannot take
CI's memory; the peak is its ru_maxrss as a small launcher process sees it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protocol.events import Done, Error, Phase, decode_check_result, decode_event
from protocol.job_spec import JobSpec, Limits
from protocol.launch import Launch
from tests.worker_helpers import run_worker, tiny_spec, worker_command, worker_env

GUARD_BYTES = 1 << 30
MIB = 1 << 20


# A fresh, small interpreter starts the process and reports its peak: a child forked from pytest itself
# would count pytest's own RSS (torch included) in its ru_maxrss until it execs.
LAUNCHER = """
import resource, subprocess, sys
limit = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_DATA, (limit, resource.getrlimit(resource.RLIMIT_DATA)[1]))
code = subprocess.call(sys.argv[3:])
open(sys.argv[1], "w").write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(code)
"""


def run_measured(args: list[str], timeout: float, peak_file: Path) -> tuple[list[str], float]:
    """Run `python -m ARGS` under the guard; its stdout lines and its peak RSS in MiB."""
    command = [sys.executable, "-c", LAUNCHER, str(peak_file), str(GUARD_BYTES), sys.executable, "-m", *args]
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=worker_env(), start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # the launcher and the process it runs
            process.wait()
    lines = [line for line in output.decode().splitlines() if line.strip()]
    return lines, int(peak_file.read_text()) / 1024


def run_worker_measured(spec: JobSpec, job_dir: Path, timeout: float = 60) -> tuple[list, float]:
    command = worker_command(spec, Launch(job_dir=str(job_dir)))
    lines, peak = run_measured(command[2:], timeout, job_dir / "peak")
    return [decode_event(line) for line in lines], peak


def run_check_measured(spec: JobSpec, work: Path, memory_mb: int = 2048) -> tuple[Error, float]:
    work.mkdir(parents=True, exist_ok=True)
    (work / "spec.json").write_text(spec.to_json())
    args = ["trainer.data.check", str(work / "spec.json"), str(work / "download"), str(memory_mb)]
    args += Launch(job_dir=str(work)).argv()
    lines, peak = run_measured(args, 60, work / "peak")
    [result] = [decode_check_result(line) for line in lines]
    assert isinstance(result, Error), result
    return result, peak


def refused_in_validation(events: list) -> Error:
    """The worker's user error, reported before it loaded anything of the model stack."""
    final = events[-1]
    assert isinstance(final, Error) and final.kind == "user_error", final
    assert [event.name for event in events if isinstance(event, Phase)] == ["validating"]
    return final


def dictionary_bomb(path: Path, rows: int, value_bytes: int) -> Path:
    """`rows` rows that all point at one dictionary entry: a few hundred bytes that decode to rows x bytes."""
    entry = pa.array(["x" * value_bytes])
    column = pa.DictionaryArray.from_arrays(pa.array(np.zeros(rows, dtype=np.int32)), entry)
    # No Arrow schema in the file (store_schema=False), as from any other writer: a reader that did not
    # ask for dictionaries would get the rows decoded.
    pq.write_table(pa.table({"text": column}), path, compression="zstd", store_schema=False)
    return path


BOMBS = [
    pytest.param(
        2000,
        100_000,
        Limits(max_dataset_bytes=16 * MIB, max_row_bytes=MIB),
        "bomb.parquet holds more than the dataset size limit of 16.0 MiB once decompressed",
        id="200MB-of-rows-in-a-tiny-file",
    ),
    pytest.param(
        400,
        1_500_000,
        Limits(),
        "row 1 of bomb.parquet: the row is 1.4 MiB, above the limit of 1.0 MiB per row",
        id="600MB-of-rows-over-the-default-row-cap",
    ),
]


@pytest.mark.parametrize(("rows", "value_bytes", "limits", "message"), BOMBS)
def test_a_parquet_dictionary_bomb_fails_the_job_early_and_small(
    tiny_model_dir, tmp_path, rows, value_bytes, limits, message
):
    bomb = dictionary_bomb(tmp_path / "bomb.parquet", rows, value_bytes)
    assert bomb.stat().st_size < 3000
    spec = tiny_spec(tiny_model_dir, bomb).replace(limits=limits)
    events, worker_peak = run_worker_measured(spec, tmp_path / "job")
    assert refused_in_validation(events).message == message
    error, check_peak = run_check_measured(spec, tmp_path / "check")
    assert (error.kind, error.message) == ("user_error", message)
    # Reading the whole bomb would take rows x value_bytes twice over (Arrow's copy and Python's).
    assert worker_peak < 200 and check_peak < 200, (worker_peak, check_peak)


def test_a_25MB_line_fails_the_job_with_its_line_and_little_memory(tiny_model_dir, tmp_path):
    data = tmp_path / "corpus.txt"
    with data.open("wb") as out:
        out.write(b"a normal first line\n")
        out.write(b"word " * (5 << 20) + b"\n")  # 25 MiB of text on line 2
    events, peak = run_worker_measured(tiny_spec(tiny_model_dir, data), tmp_path / "job")
    assert refused_in_validation(events).message == (
        "corpus.txt line 2: the row is larger than the limit of 1.0 MiB per row"
    )
    assert peak < 100, peak


def test_the_data_stage_runs_under_its_memory_limit(tiny_model_dir, tmp_path):
    """A 14 MB file of a million tiny rows needs ~20x its size as Python rows: the cap stops it."""
    data = tmp_path / "tiny-rows.jsonl"
    data.write_text((json.dumps({"text": "a"}) + "\n") * 1_000_000)
    limits = Limits(max_rows=2_000_000, data_stage_memory_mb=100)
    spec = tiny_spec(tiny_model_dir, data).replace(limits=limits)
    events, peak = run_worker_measured(spec, tmp_path / "job")
    final = refused_in_validation(events)
    assert final.message == (
        "reading the dataset needs more than 100 MiB of memory (defaults.limits.data_stage_memory_mb)"
    )
    assert peak < 140, peak


def test_the_limit_is_lifted_once_the_data_is_read(tiny_model_dir, tmp_path):
    """The model stack (torch, CUDA on a GPU) needs far more than the data stage's cap: the job still
    trains with a cap that the data fits in but the model stack does not."""
    data = tmp_path / "chats.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"messages": [{"role": "user", "content": f"{i}?"}, {"role": "assistant", "content": "!"}]}
            )
            + "\n"
            for i in range(8)
        )
    )
    spec = tiny_spec(tiny_model_dir, data, max_steps=1).replace(limits=Limits(data_stage_memory_mb=64))
    # Not under the tests' 1 GiB guard: on a GPU, CUDA alone maps more than that once the cap is lifted.
    events, code = run_worker(spec, Launch(job_dir=str(tmp_path / "job")), timeout=180)
    assert code == 0 and isinstance(events[-1], Done), events[-1]
