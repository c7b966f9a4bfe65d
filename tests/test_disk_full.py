"""A full disk under the data directory, for real: the data directory is a small tmpfs (mounted in a user
and mount namespace of its own, so nothing outside the test sees it), filled up while `qlora-bot train`
runs. The job must fail saying so (not hang), the database must stay intact, and once space is freed a
resubmitted job must run."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from tests.worker_helpers import REPO_ROOT, worker_env, write_chat_dataset

PROBE = r"""
import json, os, sqlite3, subprocess, sys, time
from pathlib import Path

home, model, dataset = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
env = {**os.environ, "QLORA_BOT_HOME": str(home)}
train = [sys.executable, "-m", "bot.cli", "train", "--base-model", model, "--dataset", dataset,
         "--max-length", "64", "--batch-size", "1", "--grad-accum", "1", "--checkpoint-steps", "2"]

def db_events(kind):
    try:
        with sqlite3.connect(home / "qlora-bot.db", timeout=10) as db:
            return db.execute("SELECT count(*) FROM events WHERE type = ?", (kind,)).fetchone()[0]
    except sqlite3.Error:
        return 0

def fill():
    try:  # every byte the tmpfs has left (when it is already full, not even the file can be made)
        with open(home / "filler", "ab") as filler:
            while True:
                filler.write(b"\0" * (1 << 16))
                filler.flush()
    except OSError:
        pass

cli = subprocess.Popen(train + ["--max-steps", "2000"], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
deadline = time.monotonic() + 120
while db_events("checkpoint") < 1 and time.monotonic() < deadline and cli.poll() is None:
    time.sleep(0.2)
fill()
try:
    out, err = cli.communicate(timeout=180)
    hung = False
except subprocess.TimeoutExpired:
    cli.kill()
    out, err = cli.communicate()
    hung = True
result = {"hung": hung, "code": cli.returncode, "stderr": err}
(home / "filler").unlink(missing_ok=True)
with sqlite3.connect(home / "qlora-bot.db") as db:
    result["integrity"] = db.execute("PRAGMA integrity_check").fetchone()[0]
    result["jobs"] = db.execute("SELECT id, state, error_message FROM jobs ORDER BY id").fetchall()
again = subprocess.run(train + ["--max-steps", "2"], env=env, capture_output=True, text=True, timeout=180)
result["again"] = {"code": again.returncode, "stdout": again.stdout, "stderr": again.stderr}
fill()  # a submission to a full disk is refused at once
refused = subprocess.run(train + ["--max-steps", "2"], env=env, capture_output=True, text=True, timeout=180)
result["refused"] = {"code": refused.returncode, "stderr": refused.stderr}
(home / "filler").unlink(missing_ok=True)

# Without the reserve (it could not be taken): the end cannot be recorded at all; the CLI must say so
# and exit instead of following a job that stays `running`.
second = home / "second"
env2 = {**os.environ, "QLORA_BOT_HOME": str(second)}
cli = subprocess.Popen(train + ["--max-steps", "2000"], env=env2, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
deadline = time.monotonic() + 120
saved = "jobs/1/checkpoints/checkpoint-*/trainer_state.json"
while not list(second.glob(saved)) and time.monotonic() < deadline:
    time.sleep(0.2)
(second / ".qlora-bot-reserve").unlink()
fill()
try:
    _, err = cli.communicate(timeout=180)
    result["unrecorded"] = {"hung": False, "code": cli.returncode, "stderr": err}
except subprocess.TimeoutExpired:
    cli.kill()
    result["unrecorded"] = {"hung": True, "code": None, "stderr": cli.communicate()[1]}
(home / "filler").unlink(missing_ok=True)
print(json.dumps(result))
"""


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=1m none /mnt"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.skipif(not _namespaces_work(), reason="needs unprivileged user and mount namespaces")
def test_a_full_disk_fails_the_job_keeps_the_database_and_frees_up(tiny_model_dir, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=32)
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE))
    mount = f"mount -t tmpfs -o size=24m none {home} && exec {sys.executable} {script} "
    command = mount + f"{home} {tiny_model_dir} {dataset}"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", command],
        capture_output=True,
        text=True,
        env=worker_env(),
        cwd=REPO_ROOT,
        timeout=600,
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    result = json.loads(probe.stdout.strip().splitlines()[-1])

    assert not result["hung"], result["stderr"][-2000:]
    assert result["code"] == 1, result["stderr"][-2000:]
    assert f"disk full under {home}" in result["stderr"], result["stderr"][-2000:]
    assert "Traceback" not in result["stderr"]
    assert result["integrity"] == "ok"
    [(job_id, state, message)] = result["jobs"][:1]
    assert (job_id, state) == (1, "failed") and f"disk full under {home}" in message
    assert result["again"]["code"] == 0, result["again"]["stderr"][-2000:]
    assert result["again"]["stdout"].strip() == f"adapter: {home / 'jobs' / '2' / 'adapter'}"
    refused = result["refused"]
    assert refused["code"] == 2 and f"error: disk full under {home}" in refused["stderr"], refused["stderr"]
    assert "Traceback" not in refused["stderr"]
    unrecorded = result["unrecorded"]
    assert not unrecorded["hung"] and unrecorded["code"] == 1, unrecorded["stderr"][-2000:]
    assert "the end of job 1 could not be recorded" in unrecorded["stderr"], unrecorded["stderr"][-2000:]
