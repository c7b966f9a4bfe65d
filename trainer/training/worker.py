"""The training worker: `python -m trainer.training.worker SPEC.json --job-dir DIR ...` (protocol/launch.py)
runs one QLoRA fine-tune and reports its events.

Reads top to bottom like the recipe it runs: validate the data before any weight is loaded, load the
4-bit base and attach LoRA, pack the tokens, train with checkpoints, save the adapter locally. Every
outcome, failures included, leaves as a protocol event on stdout; tracebacks go to stderr (the log).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.codec import to_dict
from protocol.errors import ProtocolError, UserError
from protocol.events import Done, Error, Phase, Started, encode_event
from protocol.job_folder import (
    AdapterRecord,
    JobFolder,
    LossHistory,
    Metrics,
    TrainedSpec,
    newest_checkpoint,
    write_file,
)
from protocol.job_spec import JobSpec, spec_problems
from protocol.launch import Launch, parse_launch
from protocol.sources import redact_url
from trainer.data.chat_template import choose_chat_template
from trainer.data.formats import ChatExample, to_examples
from trainer.data.memory_cap import memory_cap
from trainer.data.sources import read_records
from trainer.data.tokenization import TokenizedRows, split_off_eval, tokenize_examples
from trainer.training.memory_plan import MemoryPlan, plan_for
from trainer.training.small_data import smaller_than_one_step
from trainer.worker_io import (
    CancelFlag,
    Cancelled,
    LineWriter,
    explain_failure,
    job_relative,
    log_through_root,
    quiet_libraries,
    take_stdout,
)

# Named after the worker rather than this module: job logs and their readers know its lines by it.
log = logging.getLogger("trainer.train")

EXIT_USER_ERROR, EXIT_OOM, EXIT_INTERNAL, EXIT_CANCELLED = 2, 3, 1, 143
USAGE = (
    "usage: python -m trainer.training.worker SPEC.json --job-dir DIR [--cache-dir DIR] "
    "[--resume-checkpoint CKPT]"
)
EXIT_CODES = {"user_error": EXIT_USER_ERROR, "oom": EXIT_OOM, "internal": EXIT_INTERNAL}
DATA_STAGE_SETTING = "defaults.limits.data_stage_memory_mb"
OOM_HINT = (
    "lower max_length or batch_size (raise grad_accum to keep the batch), and keep gradient checkpointing on"
)


def main(argv: list[str] | None = None) -> int:
    emit = LineWriter(take_stdout(), encode_event)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries()
    cancel = CancelFlag()
    cancel.install()
    try:
        launch, args = parse_launch(sys.argv[1:] if argv is None else argv)
    except ProtocolError as error:
        emit(Error(kind="internal", message=f"{USAGE} ({error})"))
        return EXIT_INTERNAL
    if len(args) != 1:
        emit(Error(kind="internal", message=USAGE))
        return EXIT_INTERNAL

    def fail(error: Error) -> None:
        # Files of the job by their names in it (never the server's path to it): the message reaches Discord.
        error = dataclasses.replace(
            error,
            message=job_relative(error.message, launch.job_dir),
            hint=job_relative(error.hint, launch.job_dir),
        )
        emit(error)

    try:
        spec = JobSpec.from_json(Path(args[0]).read_text(encoding="utf-8"))
        # The log's first lines are the job's own: what it trains, before any library is imported.
        log.info("%s", job_line(spec, launch))
        emit(Started(pid=os.getpid(), attempt_resumes_from=launch.resume_checkpoint))
        return run(spec, launch, emit, cancel)
    except ProtocolError as error:
        fail(Error(kind="user_error", message=str(error), hint="fix the job spec"))
        return EXIT_USER_ERROR
    except Cancelled:
        fail(
            Error(
                kind="cancelled",
                message="cancelled before training started",
                checkpoint=_resume_point(launch),
            )
        )
        return EXIT_CANCELLED
    except Exception as error:
        failure = explain_failure(
            error,
            log,
            oom=("the GPU ran out of memory", OOM_HINT),
            traceback_in=JobFolder(Path(launch.job_dir)).log,
            disk_full_under=launch.job_dir,
        )
        # A person's error leaves nothing to resume; every other failure names the newest checkpoint.
        checkpoint = None if failure.kind == "user_error" else _resume_point(launch)
        fail(Error(kind=failure.kind, message=failure.message, hint=failure.hint, checkpoint=checkpoint))
        return EXIT_CODES[failure.kind]


@dataclass
class PreparedRun:
    """Everything between a job spec and trainer.train(), as the worker builds it."""

    trainer: Any
    tokens: Any  # TokenCounter
    callback: Any  # EventCallback
    model: Any
    tokenizer: Any
    chat_template: str
    template_source: str
    data_format: str
    prompt_style: str  # "raw" or "chat": how asks reach the adapter
    train_rows: TokenizedRows
    eval_rows: TokenizedRows | None
    plan: MemoryPlan
    fused: bool


def prepare(spec: JobSpec, launch: Launch, emit: Any, cancel: CancelFlag) -> PreparedRun:
    """Validate and tokenize the data, load the 4-bit base, attach LoRA, plan memory, build the trainer.
    The worker's path up to training; bench/train_profile.py profiles exactly this."""
    job_dir = Path(launch.job_dir)
    job_dir.mkdir(parents=True, exist_ok=True)

    # --- validating: the dataset is read, checked and tokenized before any weight is loaded. The data
    # modules are stdlib-only, so a bad file is reported before torch has even been imported, and the
    # reading runs under a memory cap that is lifted again before the model stack (CUDA) is imported.
    emit(Phase(name="validating"))
    with memory_cap(spec.limits.data_stage_memory_mb, "reading the dataset", DATA_STAGE_SETTING):
        records = read_records(spec.dataset, job_dir / "data", spec.limits, job_dir=job_dir)
        data_format, examples = to_examples(records, spec.dataset.format)
    from transformers import set_seed

    log_through_root()
    from trainer.data.tokenization_cache import cache_key, tokenized
    from trainer.training.model_loading import add_lora, load_quantized_model, load_tokenizer
    from trainer.training.packed_attention import (
        use_packed_attention,  # torch: only once the data is known good
    )

    tokenizer = load_tokenizer(spec.base_model, spec.base_revision)
    chat_template, template_source = choose_chat_template(tokenizer)
    max_length = spec.training.max_length
    key = cache_key(records.rows, data_format, tokenizer, chat_template, max_length)
    rows, reused = tokenized(
        launch.cache_dir,
        key,
        lambda: tokenize_examples(examples, tokenizer, chat_template, max_length, records.where),
    )
    train_rows, eval_rows = split_off_eval(rows, spec.training.eval_fraction, spec.training.seed)
    summary = f"{records.origin}: format {data_format}; {rows.summary()}"
    emit(Phase(name="validating", message=summary + ("; tokenized before, reused" if reused else "")))

    # --- loading_model
    emit(Phase(name="loading_model", message=spec.base_model))
    model = load_quantized_model(spec.base_model, spec.base_revision)
    # The trainer seeds itself only after LoRA is attached; without this the adapter's random
    # initialisation, and with it the whole run, would change from one attempt to the next.
    set_seed(spec.training.seed)
    model = add_lora(model, spec.lora)
    if spec.training.packing:
        # Packed rows arrive padding-free: attention follows each document's bounds (packed_attention.py).
        declined = use_packed_attention(model, spec.training.max_length)
        if declined:
            log.info("packed rows keep transformers' block-diagonal mask: %s", declined)
    from trainer.training.sft import build_trainer, fused_kernels_available

    fused = spec.training.fused_kernels and fused_kernels_available()
    if spec.training.fused_kernels and not fused:
        log.info("fused kernels off: they need a CUDA GPU and liger-kernel (pip install 'qlora-bot[gpu]')")
    plan = plan_for(spec, model)  # it logs the plan, with its predicted peak
    emit(Phase(name="loading_model", message=plan.message))

    # --- tokenizing: trl builds labels from our masks and packs rows into max_length sequences.
    emit(Phase(name="tokenizing"))
    # The plan may merge accumulated micro-steps; tokens per optimizer step stay the job's.
    planned = spec.replace(
        training=dataclasses.replace(spec.training, batch_size=plan.rows, grad_accum=plan.accumulation)
    )
    trainer, tokens, callback = build_trainer(
        planned, launch, model, tokenizer, train_rows, eval_rows, emit, cancel, plan.checkpointing, fused
    )
    emit(
        Phase(
            name="tokenizing",
            message=f"{len(trainer.train_dataset)} packed rows of up to {spec.training.max_length} tokens",
        )
    )
    too_small = smaller_than_one_step(len(trainer.train_dataset), spec.training)
    if too_small:  # in the job's log and events, and on the terminal or status message as a phase line
        log.warning(too_small.removeprefix("warning: "))
        emit(Phase(name="tokenizing", message=too_small))
    return PreparedRun(
        trainer=trainer,
        tokens=tokens,
        callback=callback,
        model=model,
        tokenizer=tokenizer,
        chat_template=chat_template,
        template_source=template_source,
        data_format=data_format,
        prompt_style="raw" if _is_plain(examples) else "chat",
        train_rows=train_rows,
        eval_rows=eval_rows,
        plan=plan,
        fused=fused,
    )


def run(spec: JobSpec, launch: Launch, emit: Any, cancel: CancelFlag) -> int:
    problems = spec_problems(spec)
    if problems:
        raise UserError("invalid job settings: " + "; ".join(problems), "change the settings named above")
    folder = JobFolder(Path(launch.job_dir))
    started_at = time.monotonic()
    prepared = prepare(spec, launch, emit, cancel)
    trainer, callback, plan = prepared.trainer, prepared.callback, prepared.plan
    from trainer.training.model_loading import resolved_revision, runtime_description
    from trainer.training.training_events import AlreadyTrained

    # --- training
    emit(Phase(name="training"))
    cancel.training = True  # from here on SIGTERM means "checkpoint and stop", never an abort
    try:
        result = trainer.train(resume_from_checkpoint=launch.resume_checkpoint)
        train_runtime_s = result.metrics["train_runtime"]
    except AlreadyTrained as trained:
        # Resumed from the last step's checkpoint (e.g. the worker died while saving): the Trainer has
        # loaded its weights, so the adapter is saved as it is.
        log.info("%s: nothing left to train", trained)
        train_runtime_s = 0.0
    if cancel.requested and trainer.state.global_step < trainer.state.max_steps:
        emit(
            Error(
                kind="cancelled",
                message="cancelled; a checkpoint was saved",
                checkpoint=_resume_point(launch),
            )
        )
        return EXIT_CANCELLED
    eval_loss = None
    if prepared.eval_rows is not None:
        last = callback.eval_history[-1] if callback.eval_history else None
        if last is not None and last["step"] == trainer.state.global_step:
            # The last step was an eval step: the same weights, the same loss; one point per step.
            eval_loss = last["eval_loss"]
        else:
            eval_loss = trainer.evaluate().get("eval_loss")

    # --- saving: the adapter, its tokenizer and chat template, and what produced it.
    emit(Phase(name="saving"))
    adapter_dir = folder.adapter
    prepared.model.save_pretrained(adapter_dir, safe_serialization=True)
    prepared.tokenizer.chat_template = prepared.chat_template
    prepared.tokenizer.save_pretrained(adapter_dir)
    metrics = Metrics(
        # Over the whole job, resumed steps included (the Trainer's own figure covers only this attempt).
        train_loss=_mean([point["loss"] for point in callback.loss_history]),
        final_loss=callback.loss_history[-1]["loss"] if callback.loss_history else None,
        eval_loss=eval_loss,
        steps=trainer.state.global_step,
        epochs=trainer.state.epoch,
        tokens=prepared.tokens.tokens,
        train_runtime_s=round(train_runtime_s, 3),
        total_runtime_s=round(time.monotonic() - started_at, 3),
        examples=len(prepared.train_rows.input_ids),
        eval_examples=len(prepared.eval_rows.input_ids) if prepared.eval_rows else 0,
    )
    record = AdapterRecord(
        # The spec as trained: the base revision pinned, and where this attempt ran and resumed from.
        spec=TrainedSpec.of(
            spec.replace(base_revision=spec.base_revision or resolved_revision(prepared.model)), launch
        ),
        data_format=prepared.data_format,
        prompt_style=prepared.prompt_style,  # chats are asked through the template
        chat_template_source=prepared.template_source,
        runtime={
            **runtime_description(trainer.args),
            "gradient_checkpointing": plan.checkpointing,
            "micro_step": f"{plan.rows} rows x {plan.accumulation} accumulated",
            "fused_kernels": prepared.fused,
        },
    )
    write_file(folder.record, record)
    write_file(folder.metrics, metrics)
    write_file(folder.loss_history, LossHistory.of(callback.loss_history, callback.eval_history))
    emit(Done(adapter_dir=str(adapter_dir), metrics=to_dict(metrics)))
    return 0


def job_line(spec: JobSpec, launch: Launch) -> str:
    """What the job trains, in one line: the first of its log."""
    folder = Path(launch.job_dir).name
    job = f"job {folder}" if folder.isdigit() else f"job in {launch.job_dir}"  # named by id under jobs/
    dataset = spec.dataset
    source = redact_url(dataset.source) if dataset.kind == "url" else dataset.source  # signed URLs
    shown = f"{dataset.label} ({source})" if dataset.label else source
    training, lora = spec.training, spec.lora
    steps = training.max_steps
    length = f"{steps} steps" if steps is not None else f"{training.epochs:g} epochs"
    resume = f"; resuming from {launch.resume_checkpoint}" if launch.resume_checkpoint else ""
    return (
        f"{job}{f' ({spec.name})' if spec.name else ''}: base model {spec.base_model}"
        f"{f'@{spec.base_revision}' if spec.base_revision else ''}; dataset {shown} "
        f"({dataset.kind}, format {dataset.format}); LoRA r={lora.r} alpha={lora.resolved_alpha}; {length}, "
        f"{training.batch_size} rows x {training.grad_accum} accumulated of up to {training.max_length} "
        f"tokens, lr {training.learning_rate:g}, eval {training.eval_fraction:g} of the rows{resume}"
    )


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _is_plain(examples: list) -> bool:
    return not examples or not isinstance(examples[0], ChatExample)


def _resume_point(launch: Launch) -> str | None:
    """The newest checkpoint of this job, where a later attempt can resume."""
    return newest_checkpoint(launch.job_dir) or launch.resume_checkpoint


if __name__ == "__main__":
    sys.exit(main())
