"""What a finished job folder holds, from one real `qlora-bot train` on the tiny model with an eval split:
loss.png with both curves, our model card in adapter/ (no Hub link), no template cards in checkpoints/, and
a train.log that opens with the job's own line. Plus the filter that keeps known library noise out of it."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bot.loss_chart import history_points, loss_chart_png, loss_figure
from protocol.job_folder import JobFolder, read_loss_history, read_metrics
from tests.test_cli_train import cli
from tests.worker_helpers import train_args, write_chat_dataset
from trainer.worker_io import KnownNoise

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory) -> JobFolder:
    """One job of 4 steps, checkpointed at steps 2 and 4, a quarter of the rows held out for eval."""
    root = tmp_path_factory.mktemp("artifacts")
    dataset = write_chat_dataset(root / "chat.jsonl", rows=24)
    extra = ("--r", "4", "--lr", "1e-3", "--eval-fraction", "0.25")
    result = cli(
        *train_args(tiny_model_dir, dataset, steps=4, checkpoint_steps=2, extra=extra), home=root / "h"
    )
    assert result.returncode == 0, result.stderr
    return JobFolder(Path(result.stdout.strip().removeprefix("adapter: ")).parent)


def test_a_succeeded_job_has_its_loss_chart_with_train_and_eval_curves(finished):
    png = finished.loss_chart.read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    train, evals = history_points(read_loss_history(finished.path))
    assert len(train) == 4 and len(evals) == 2  # every logged step, an eval at each checkpoint
    # The file is the chart of the worker's loss history, and that chart draws both curves.
    assert png == loss_chart_png(train, evals, "chat-1 · loss")
    [axes] = loss_figure(train, evals, "chat-1 · loss").axes
    drawn = {line.get_label(): list(zip(*line.get_data(), strict=True)) for line in axes.get_lines()}
    assert drawn == {"train loss": train, "eval loss": evals}
    [axes] = loss_figure(train, [], "no eval").axes
    assert [line.get_label() for line in axes.get_lines()] == ["train loss"]


def test_the_adapter_card_is_ours_without_a_hub_link(finished, tiny_model_dir):
    card = finished.card.read_text()
    metrics = read_metrics(finished.path)
    assert metrics is not None and metrics.final_loss is not None
    for expected in (
        "library_name: peft",
        "# chat-1",
        f"a local base model (`{tiny_model_dir.name}`)",
        "- Dataset: a local file, `chat.jsonl`",
        "| LoRA r | 4 |",
        f"| Final train loss | {metrics.final_loss:.4f} |",
        f"| Eval loss | {metrics.eval_loss:.4f} |",
        "![Training and eval loss by step](../loss.png)",
        "from_pretrained(ADAPTER",
    ):
        assert expected in card, expected
    assert "huggingface.co" not in card  # a local base and dataset: no link at all, the adapter's least
    for template in ("[More Information Needed]", "This model was trained with TRL", "Model Card for"):
        assert template not in card, template
    assert str(finished.path) not in card  # folders move: the card names none of this machine's paths


def test_checkpoints_hold_no_template_cards(finished):
    checkpoints = sorted(path.name for path in finished.checkpoints.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-2", "checkpoint-4"]
    assert list(finished.checkpoints.rglob("README.md")) == []


def test_the_log_opens_with_the_jobs_own_line(finished, tiny_model_dir):
    lines = finished.log.read_text().splitlines()
    assert " INFO trainer.train: job 1 (chat): base model " in lines[0]
    assert f"base model {tiny_model_dir};" in lines[0] and "LoRA r=4" in lines[0] and "4 steps" in lines[0]
    log = "\n".join(lines)
    assert "Loading weights" not in log and "\r" not in log  # no progress bars redrawn in the log
    assert "is_gradient_checkpointing" not in log  # a library's own deprecation, nothing the job can do


def _record(name: str, message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_known_library_noise_is_dropped_and_every_other_warning_kept():
    offline, online = KnownNoise(offline=True), KnownNoise(offline=False)
    deprecation = _record("py.warnings", "x.py:1: FutureWarning: `is_gradient_checkpointing` is deprecated")
    kernel = _record(
        "bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward from kernels-community"
    )
    assert not offline.filter(deprecation) and not online.filter(deprecation)
    liger = _record("py.warnings", "sft.py:107: FutureWarning: `use_liger_kernel=True` is deprecated ...")
    backend = _record(
        "liger_kernel.backends.registry",
        "Backend impl 'liger_kernel.ops.backends._cutedsl.rope' for op 'rope' could not be imported",
    )
    for noise in (liger, backend):  # as the H200's train.log showed them, after the job's own first line
        assert not offline.filter(noise) and not online.filter(noise), noise.getMessage()
    assert not offline.filter(kernel)  # offline by design: the fallback is expected
    assert online.filter(kernel)  # online the fetch should have worked: a real warning
    for real in (
        _record("py.warnings", "x.py:1: UserWarning: something the job should know"),
        _record("transformers.modeling_utils", "Some weights were not initialized"),
        _record("peft", "kernels-community named by another library"),
    ):
        assert offline.filter(real) and online.filter(real), real.getMessage()
