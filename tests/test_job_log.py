"""bot/jobs/job_log.py: the job's own lines out of a worker log full of progress bars and library noise."""

from __future__ import annotations

from bot.jobs.job_log import job_lines, job_log_tail

BAR = "██████████"
# Shaped after a real train.log of the tiny model (tqdm bars redrawn after \r, a warnings.warn pair, a
# library's print and records), with a library record's traceback and a failing trainer run added.
WORKER_LOG = (
    "2026-12-04 01:11:21,109 WARNING bitsandbytes.backends.cpu.ops: Failed to load CPU gemm_4bit_forward\n"
    f"\rLoading weights:   0%|          | 0/21 [00:00<?, ?it/s]\rLoading weights: 100%|{BAR}| 21/21\n"
    "/site-packages/transformers/modeling_utils.py:3314: FutureWarning: `is_gradient_checkpointing` is "
    "deprecated and will be removed in v6.\n"
    "  warnings.warn(\n"
    "2026-12-04 01:11:22,508 INFO trainer.train: fused kernels off: they need a CUDA GPU and liger-kernel\n"
    f"\rPacking train dataset:   0%|          | 0/48\rPacking train dataset: 100%|{BAR}| 48/48\n"
    "[transformers] mtime may not be reliable on this filesystem, falling back to numerical ordering\n"
    "2026-12-04 01:11:23,001 WARNING transformers.trainer: a library's record, with its traceback\n"
    "Traceback (most recent call last):\n"
    '  File "/site-packages/transformers/trainer.py", line 10, in f\n'
    "    raise KeyError('x')\n"
    "KeyError: 'x'\n"
    "\r  0%|          | 0/4 [00:00<?, ?it/s]\r 25%|██▌       | 1/4 [00:01<00:03,  1.02s/it]"
    "2026-12-04 01:11:24,100 INFO trainer.train: packed rows keep the block-diagonal mask\n"
    "\r 50%|█████     | 2/4 [00:02<00:02,  1.01s/it]\n"
    "2026-12-04 01:11:24,900 INFO bot.jobs.runner: job 3: the worker asked to stop\n"
    "2026-12-04 01:11:25,000 ERROR trainer.train: internal error:\n"
    "Traceback (most recent call last):\n"
    '  File "/work/trainer/train.py", line 70, in main\n'
    "    return run(spec, emit, cancel)\n"
    "           ^^^^^^^^^^^^^^^^^^^^^^^\n"
    "ValueError: boom\n"
    "\n"
    "The above exception was the direct cause of the following exception:\n"
    "\n"
    "Traceback (most recent call last):\n"
    '  File "/work/trainer/train.py", line 72, in main\n'
    "RuntimeError: the step failed\n"
    "/site-packages/torch/utils/checkpoint.py:85: UserWarning: None of the inputs have requires_grad=True.\n"
    "  warnings.warn(\n"
    f"\r100%|{BAR}| 4/4 [00:04<00:00,  1.00s/it]\n"
)
JOB_LINES = [
    "2026-12-04 01:11:22,508 INFO trainer.train: fused kernels off: they need a CUDA GPU and liger-kernel",
    "2026-12-04 01:11:24,100 INFO trainer.train: packed rows keep the block-diagonal mask",
    "2026-12-04 01:11:24,900 INFO bot.jobs.runner: job 3: the worker asked to stop",
    "2026-12-04 01:11:25,000 ERROR trainer.train: internal error:",
    "Traceback (most recent call last):",
    '  File "/work/trainer/train.py", line 70, in main',
    "    return run(spec, emit, cancel)",
    "           ^^^^^^^^^^^^^^^^^^^^^^^",
    "ValueError: boom",
    "The above exception was the direct cause of the following exception:",
    "Traceback (most recent call last):",
    '  File "/work/trainer/train.py", line 72, in main',
    "RuntimeError: the step failed",
]


def test_only_the_jobs_own_records_and_their_tracebacks_are_kept():
    assert job_lines(WORKER_LOG) == JOB_LINES


def test_a_traceback_outside_any_record_is_kept():
    crash = (
        f"\rLoading weights: 100%|{BAR}| 21/21\n"
        "Traceback (most recent call last):\n"
        '  File "<frozen runpy>", line 198, in _run_module_as_main\n'
        "ModuleNotFoundError: No module named 'trl'\n"
    )
    assert job_lines(crash) == crash.split("\n")[1:4]


def test_the_tail_is_the_last_job_lines_of_the_file(tmp_path):
    log = tmp_path / "train.log"
    assert job_log_tail(log) == ""  # no log yet
    # A long log: the tail is read from the end, past megabytes of progress bars.
    noise = "".join(f"\r{i}%|{BAR}| {i}/100" for i in range(100)) + "\n"
    log.write_text(noise * 2000 + WORKER_LOG, encoding="utf-8")
    assert log.stat().st_size > 2 << 20
    assert job_log_tail(log, lines=4).splitlines() == JOB_LINES[-4:]
