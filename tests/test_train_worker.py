"""trainer/training/worker.py end to end on the CPU: the real QLoRA path on a tiny random Llama."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.events import PHASES, Checkpoint, Done, Error, Eval, Phase, Progress, Started, decode_event
from protocol.launch import Launch
from tests.worker_helpers import run_worker, tiny_spec, worker_command, worker_env, write_chat_dataset


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """One short job with an eval split, shared by the tests that only inspect its results."""
    root = tmp_path_factory.mktemp("trained")
    dataset = write_chat_dataset(root / "chat.jsonl")
    spec = tiny_spec(tiny_model_dir, dataset, eval_fraction=0.25)
    events, code = run_worker(spec, Launch(job_dir=str(root / "job")))
    return spec, root / "job", events, code


def test_events_arrive_in_order(trained):
    _spec, _job_dir, events, code = trained
    assert code == 0, events[-1]
    assert isinstance(events[0], Started)
    phases = [event.name for event in events if isinstance(event, Phase)]
    assert list(dict.fromkeys(phases)) == list(PHASES)
    progress = [event for event in events if isinstance(event, Progress)]
    assert [event.step for event in progress] == sorted(event.step for event in progress)
    assert progress[-1].step == progress[-1].total_steps == 4
    assert all(event.loss is not None and math.isfinite(event.loss) for event in progress)
    assert progress[-1].tokens_seen > 0 and progress[-1].tokens_per_s > 0
    assert [event.step for event in events if isinstance(event, Checkpoint)] == [2, 4]
    assert any(isinstance(event, Eval) and math.isfinite(event.eval_loss) for event in events)
    assert isinstance(events[-1], Done)
    first_training = next(i for i, e in enumerate(events) if isinstance(e, Phase) and e.name == "training")
    assert all(events.index(event) > first_training for event in progress)


def test_output_folder_holds_adapter_tokenizer_template_spec_and_metrics(trained):
    spec, job_dir, events, _code = trained
    done = events[-1]
    adapter = Path(done.adapter_dir)
    assert adapter == job_dir / "adapter"
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (adapter / name).is_file(), name
    record = json.loads((adapter / "qlora_bot.json").read_text())
    assert record["spec"]["dataset"]["source"] == spec.dataset.source
    assert record["data_format"] == "messages" and record["prompt_style"] == "chat"
    metrics = json.loads((job_dir / "metrics.json").read_text())
    assert metrics == done.metrics
    assert metrics["steps"] == 4 and metrics["tokens"] > 0 and math.isfinite(metrics["eval_loss"])
    history = json.loads((job_dir / "loss_history.json").read_text())
    assert [point["step"] for point in history["train"]] == [1, 2, 3, 4]


def test_adapter_loads_on_the_4bit_base_and_changes_the_output(trained, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    _spec, _job_dir, events, _code = trained
    adapter_dir = Path(events[-1].adapter_dir)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.float32,
    )

    def base_model():
        return AutoModelForCausalLM.from_pretrained(
            tiny_model_dir, quantization_config=quantization, dtype=torch.float32
        )

    # bitsandbytes repacks a 4-bit weight in place on its first CPU inference forward on CPUs with
    # AVX512-BF16/AMX, so a first forward's logits differ from later ones by ~2e-3 (FACTS.md). Every
    # output compared below comes from a model that has already run one forward: like with like.
    inputs = torch.tensor([[1, 40, 41, 42, 43]])
    with torch.no_grad():
        tuned = PeftModel.from_pretrained(base_model(), adapter_dir)
        inputs = inputs.to(tuned.device)  # bnb puts 4-bit weights on a GPU
        tuned(inputs)  # warm-up: repacks the shared 4-bit base weights where bnb does that
        after = tuned(inputs).logits
        with tuned.disable_adapter():
            disabled = tuned(inputs).logits
        plain = base_model()
        plain(inputs)  # warm-up, as above
        base = plain(inputs).logits
    assert not torch.allclose(disabled, after, atol=1e-4)  # the trained adapter changes the answer
    torch.testing.assert_close(disabled, base)  # and disabling it gives the plain base model's back


def test_resume_continues_at_the_saved_step(trained, tmp_path):
    spec, job_dir, _events, _code = trained
    checkpoint = job_dir / "checkpoints" / "checkpoint-2"
    assert (checkpoint / "trainer_state.json").is_file()
    events, code = run_worker(
        spec, Launch(job_dir=str(tmp_path / "resumed"), resume_checkpoint=str(checkpoint))
    )
    assert code == 0, events[-1]
    assert events[0] == Started(pid=events[0].pid, attempt_resumes_from=str(checkpoint))
    steps = [event.step for event in events if isinstance(event, Progress)]
    assert steps[0] == 3 and steps[-1] == 4
    history = json.loads((tmp_path / "resumed" / "loss_history.json").read_text())
    assert [point["step"] for point in history["train"]] == [
        1,
        2,
        3,
        4,
    ]  # the curve before the resume is kept


def test_an_attempt_resumed_at_the_last_step_still_reports_the_rate_and_loss(trained, tmp_path):
    """A bot that died while the adapter was saved re-queues the job from its last checkpoint: nothing
    is left to train, yet the final progress (what the finished status shows) keeps a real rate."""
    spec, job_dir, _events, _code = trained
    checkpoint = job_dir / "checkpoints" / "checkpoint-4"
    events, code = run_worker(
        spec, Launch(job_dir=str(tmp_path / "resumed"), resume_checkpoint=str(checkpoint))
    )
    assert code == 0, events[-1]
    progress = [event for event in events if isinstance(event, Progress)]
    assert progress[-1].step == progress[-1].total_steps == 4
    assert progress[-1].tokens_seen > 0 and progress[-1].tokens_per_s > 0
    assert progress[-1].loss is not None and math.isfinite(progress[-1].loss)


def test_sigterm_saves_a_checkpoint_and_reports_cancelled(tiny_model_dir, tmp_path):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl")
    spec = tiny_spec(tiny_model_dir, dataset, max_steps=100_000, checkpoint_steps=100_000)
    process = subprocess.Popen(
        worker_command(spec, Launch(job_dir=str(tmp_path / "job"))),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=worker_env(),
    )
    events = []
    try:
        for line in process.stdout:
            events.append(decode_event(line))
            if isinstance(events[-1], Progress) and events[-1].step >= 2:
                process.send_signal(signal.SIGTERM)
                break
        events += [decode_event(line) for line in process.stdout]
        code = process.wait(timeout=120)
    finally:
        process.kill()
    assert code == 143
    checkpoint = next(event for event in events if isinstance(event, Checkpoint))
    assert Path(checkpoint.path, "trainer_state.json").is_file()
    final = events[-1]
    assert isinstance(final, Error) and final.kind == "cancelled"
    assert final.checkpoint == checkpoint.path


def test_sigterm_before_training_is_a_clean_cancel(tiny_model_dir, tmp_path):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl")
    spec = tiny_spec(tiny_model_dir, dataset)
    process = subprocess.Popen(
        worker_command(spec, Launch(job_dir=str(tmp_path / "job"))),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=worker_env(),
    )
    first = decode_event(process.stdout.readline())
    assert isinstance(first, Started)
    process.send_signal(signal.SIGTERM)
    rest = [decode_event(line) for line in process.stdout]
    assert process.wait(timeout=60) == 143
    assert rest[-1] == Error(kind="cancelled", message="cancelled before training started")


def test_bad_dataset_fails_before_loading_the_model(tiny_model_dir, tmp_path):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=20)
    lines = dataset.read_text().splitlines()
    lines[16] = '{"messages": [{"role": "user", "content": "hi"}'  # line 17 is cut short
    dataset.write_text("\n".join(lines) + "\n")
    events, code = run_worker(tiny_spec(tiny_model_dir, dataset), Launch(job_dir=str(tmp_path / "job")))
    assert code == 2
    final = events[-1]
    assert isinstance(final, Error) and final.kind == "user_error"
    assert final.message.startswith("chat.jsonl line 17: not valid JSON")
    assert final.hint
    assert not any(isinstance(event, Phase) and event.name == "loading_model" for event in events)


def test_missing_base_model_is_a_user_error(tmp_path):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=4)
    events, code = run_worker(
        tiny_spec(tmp_path / "no-such-model", dataset), Launch(job_dir=str(tmp_path / "job"))
    )
    assert code == 2
    assert events[-1] == Error(
        kind="user_error",
        message=f"base model folder {tmp_path / 'no-such-model'} does not exist",
        hint="pass an existing folder or a Hub model id",
    )


def test_invalid_settings_are_a_user_error_naming_the_field(tiny_model_dir, tmp_path):
    dataset = write_chat_dataset(tmp_path / "chat.jsonl", rows=4)
    spec = tiny_spec(tiny_model_dir, dataset, learning_rate=-1.0)
    events, code = run_worker(spec, Launch(job_dir=str(tmp_path / "job")))
    assert code == 2
    assert events[-1].kind == "user_error"
    assert "training.learning_rate: must be a finite number > 0" in events[-1].message


FAILING_RUN = """
import sys, torch, trainer.training.worker as worker
def run(spec, launch, emit, cancel):
    raise {exception}
worker.run = run
sys.exit(worker.main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("exception", "code", "kind", "message", "hint"),
    [
        (
            "torch.OutOfMemoryError('CUDA out of memory. Tried to allocate 2.00 GiB')",
            3,
            "oom",
            "the GPU ran out of memory",
            "lower max_length or batch_size",
        ),
        (
            "KeyError('lm_head')",
            1,
            "internal",
            "internal error: KeyError: 'lm_head'",
            "the full traceback is in",
        ),
    ],
)
def test_failures_become_error_events_with_a_hint(tmp_path, exception, code, kind, message, hint):
    spec = tiny_spec(tmp_path / "model", tmp_path / "data.jsonl")
    command = worker_command(spec, Launch(job_dir=str(tmp_path / "job")))
    result = subprocess.run(
        [sys.executable, "-c", FAILING_RUN.format(exception=exception), *command[3:]],
        capture_output=True,
        text=True,
        env=worker_env(),
        timeout=120,
    )
    events = [decode_event(line) for line in result.stdout.splitlines()]
    assert result.returncode == code
    assert [type(event) for event in events] == [Started, Error]
    assert events[-1].kind == kind and events[-1].message == message and hint in events[-1].hint
    assert "Traceback" in result.stderr  # the traceback goes to the log, never to the event stream


def test_gated_and_missing_hub_models_get_actionable_errors():
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    from protocol.errors import UserError
    from trainer.training.model_loading import _explained_load_errors

    # huggingface_hub 2.x builds its errors from its own HTTP client's responses (httpx2, not httpx).
    http = pytest.importorskip("httpx2")
    response = http.Response(403, request=http.Request("GET", "http://hub.invalid"))
    for error, expected in [
        (GatedRepoError("gated", response=response), "accept its license"),
        (RepositoryNotFoundError("missing", response=response), "check the model id"),
    ]:
        with pytest.raises(UserError) as caught, _explained_load_errors("org/model"):
            raise error
        assert expected in caught.value.hint and "org/model" in caught.value.message
