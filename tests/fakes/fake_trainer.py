"""A stand-in for `python -m trainer.training.worker` that speaks the real protocol in milliseconds per step.

Its behaviour comes from the spec's dataset source, e.g. "fake:steps=6;step_s=0.05;crash_once_at=3"
(or the first line of an uploaded dataset file, {"fake": "steps=6"}):
steps, step_s (sleep per step), fail_at + fail_kind (report an error; with fail_with_paths its message,
hint and a log line name the job's files by absolute paths), crash_once_at (SIGKILL itself
on the first attempt only), crash_at (every attempt), abort_in=PHASE (abort, SIGABRT, once it has
reported that phase, on every attempt, as an allocator does when it runs out), garbage_at,
oversize_at, ignore_sigterm, checkpoint_every (default: the spec's training.checkpoint_steps).
Checkpoints follow the real layout (JOB/checkpoints/checkpoint-N/trainer_state.json) every
training.checkpoint_steps. The adapter folder has the files train.py saves (a small but valid
safetensors file, adapter_config.json, tokenizer files, qlora_bot.json and trl's README.md).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import struct
import sys
import time
from pathlib import Path

from protocol.events import Checkpoint, Done, Error, Phase, Progress, Started, encode_event
from protocol.job_folder import (
    ADAPTER_CONFIG,
    ADAPTER_RECORD,
    TRAINER_STATE,
    AdapterRecord,
    JobFolder,
    Metrics,
    TrainedSpec,
    write_file,
)
from protocol.job_spec import JobSpec
from protocol.launch import Launch, parse_launch


def emit(event) -> None:
    sys.stdout.write(encode_event(event) + "\n")
    sys.stdout.flush()


def source_of(spec: JobSpec, launch: Launch) -> str:
    """The dataset as a path to read (an upload lies in the job folder), or the "fake:..." text."""
    if spec.dataset.kind == "upload":
        return str(Path(launch.job_dir) / spec.dataset.source)
    return spec.dataset.source


def options(source: str) -> dict[str, str]:
    """From "fake:..." or, for an uploaded file, from its first line: {"fake": "steps=4;..."}."""
    if source.startswith("fake:"):
        body = source.removeprefix("fake:")
    else:
        body = json.loads(Path(source).read_text().splitlines()[0])["fake"]
    return dict(part.split("=", 1) for part in body.split(";") if part)


def main() -> int:
    launch, (spec_file,) = parse_launch(sys.argv[1:])
    spec = JobSpec.from_json(Path(spec_file).read_text())
    opts = options(source_of(spec, launch))
    steps, step_s = int(opts.get("steps", "5")), float(opts.get("step_s", "0.02"))
    checkpoint_every = int(opts.get("checkpoint_every", spec.training.checkpoint_steps))
    stop = {"requested": False}
    if opts.get("ignore_sigterm"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    folder = JobFolder(Path(launch.job_dir))
    job_dir, resume = folder.path, launch.resume_checkpoint
    first = int(Path(resume).name.split("-")[-1]) if resume else 0
    emit(Started(pid=os.getpid(), attempt_resumes_from=resume))
    # The job log, written as the real worker writes it (trainer/training/worker.py main()).
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("trainer.fake").info("fake trainer: %d steps from step %d", steps, first)
    for name in ("validating", "loading_model", "tokenizing", "training"):
        emit(Phase(name=name))
        if opts.get("abort_in") == name:
            os.abort()
    for step in range(first + 1, steps + 1):
        time.sleep(step_s)
        if str(step) == opts.get("crash_once_at") and resume is None:
            os.kill(os.getpid(), signal.SIGKILL)
        if str(step) == opts.get("crash_at"):
            os.kill(os.getpid(), signal.SIGKILL)
        if str(step) == opts.get("garbage_at"):
            print("Loading checkpoint shards: 100%", flush=True)
            time.sleep(60)
        if str(step) == opts.get("oversize_at"):
            sys.stdout.write("{" + "x" * (2 << 20) + "}\n")
            sys.stdout.flush()
            time.sleep(60)
        if str(step) == opts.get("fail_at"):
            message, hint = "fake failure", "fake hint"
            if opts.get("fail_with_paths"):  # as a worker that names the job's files by their full paths
                message = f"{job_dir / 'upload' / 'dataset.jsonl'} line 3: fake failure"
                hint = f"the full traceback is in {job_dir / 'train.log'} (written in {job_dir})"
                logging.getLogger("trainer.fake").error("could not read %s", job_dir / "upload" / "x.jsonl")
            emit(Error(kind=opts.get("fail_kind", "internal"), message=message, hint=hint))
            return 1
        emit(
            Progress(
                step=step,
                total_steps=steps,
                epoch=step / steps,
                tokens_seen=step * 100,
                tokens_per_s=1000.0,
                eta_s=(steps - step) * step_s,
                loss=2.0 / step,
            )
        )
        if step % checkpoint_every == 0 or stop["requested"]:
            path = folder.checkpoints / f"checkpoint-{step}"
            path.mkdir(parents=True, exist_ok=True)
            (path / TRAINER_STATE).write_text(json.dumps({"global_step": step}))
            (path / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(spec)))
            emit(Checkpoint(step=step, path=str(path)))
        if stop["requested"]:
            emit(Error(kind="cancelled", message="cancelled; a checkpoint was saved", checkpoint=str(path)))
            return 143
    emit(Phase(name="saving"))
    adapter = folder.adapter
    write_adapter(adapter, spec, step_s, launch)
    metrics = {
        "final_loss": 2.0 / steps,
        "steps": steps,
        "tokens": steps * 100,
        "total_runtime_s": steps * step_s,
    }
    write_file(folder.metrics, Metrics(**metrics))
    emit(Done(adapter_dir=str(adapter), metrics=metrics))
    return 0


def adapter_config(spec: JobSpec) -> dict:
    """What peft writes into every checkpoint and adapter folder (the part qlora-bot reads)."""
    return {
        "base_model_name_or_path": spec.base_model,
        "peft_type": "LORA",
        "r": spec.lora.r,
        "lora_alpha": spec.lora.resolved_alpha,
    }


def write_adapter(adapter: Path, spec: JobSpec, seed: float, launch: Launch | None = None) -> None:
    """The files of a real adapter folder, with made-up contents; `launch`: where it was trained (by
    default in the adapter's job folder)."""
    adapter.mkdir(parents=True, exist_ok=True)
    weights = struct.pack("<4f", seed, 1.0, 2.0, 3.0)
    header = json.dumps(
        {"base_model.lora_A.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
    )
    (adapter / "adapter_model.safetensors").write_bytes(
        struct.pack("<Q", len(header)) + header.encode() + weights
    )
    (adapter / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(spec)))
    (adapter / "tokenizer.json").write_text('{"version": "1.0"}')
    (adapter / "tokenizer_config.json").write_text('{"model_max_length": 2048}')
    (adapter / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    runtime = {"device": "cpu", "compute_dtype": "float32", "optimizer": "adamw_torch"}
    trained = TrainedSpec.of(spec, launch or Launch(job_dir=str(adapter.parent)))
    record = AdapterRecord(
        spec=trained,
        prompt_style="chat",
        data_format="text",
        chat_template_source="base model",
        runtime=runtime,
    )
    write_file(adapter / ADAPTER_RECORD, record)
    (adapter / "README.md").write_text("---\nlibrary_name: peft\n---\nThis model was trained with TRL.\n")


if __name__ == "__main__":
    sys.exit(main())
