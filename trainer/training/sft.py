"""Configure trl's SFTTrainer for the job: packing, precision, optimizer, checkpoints and our callbacks."""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from transformers import PrinterCallback, ProgressCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from trl import SFTConfig, SFTTrainer

from protocol.events import Event
from protocol.job_folder import MODEL_CARD, JobFolder
from protocol.job_spec import JobSpec
from protocol.launch import Launch
from trainer.data.tokenization import TokenizedRows
from trainer.training.training_events import EventCallback, TokenCounter
from trainer.worker_io import CancelFlag


def fused_kernels_available() -> bool:
    """liger-kernel's Triton kernels need a CUDA GPU, Triton and the package itself."""
    return (
        torch.cuda.is_available()
        and importlib.util.find_spec("liger_kernel") is not None
        and importlib.util.find_spec("triton") is not None
    )


def build_trainer(
    spec: JobSpec,
    launch: Launch,
    model: Any,
    tokenizer: Any,
    train_rows: TokenizedRows,
    eval_rows: TokenizedRows | None,
    emit: Callable[[Event], None],
    cancel: CancelFlag,
    checkpointing: bool,
    fused_kernels: bool,
) -> tuple[SFTTrainer, TokenCounter, EventCallback]:
    """checkpointing and fused_kernels: decided by the worker (memory plan, fused_kernels_available)."""
    training = spec.training
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    eval_steps = training.checkpoint_steps
    args = SFTConfig(
        output_dir=str(JobFolder(Path(launch.job_dir)).checkpoints),
        num_train_epochs=training.epochs,
        max_steps=training.max_steps if training.max_steps is not None else -1,
        learning_rate=training.learning_rate,
        warmup_steps=training.warmup,  # a float below 1 is a fraction of the steps (transformers 5)
        lr_scheduler_type=training.scheduler,
        weight_decay=training.weight_decay,
        max_grad_norm=training.max_grad_norm,
        seed=training.seed,
        data_seed=training.seed,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.grad_accum,
        **_checkpointing_args(checkpointing),
        use_liger_kernel=fused_kernels,
        bf16=bf16,
        fp16=cuda and not bf16,
        use_cpu=not cuda,
        # 8-bit AdamW is a CUDA kernel; on the CPU (tests, CI) plain AdamW keeps the same semantics.
        optim="adamw_bnb_8bit" if cuda else "adamw_torch",
        max_length=training.max_length,
        packing=training.packing,
        completion_only_loss=train_rows.completion_mask is not None,
        logging_steps=training.logging_steps,
        save_strategy="steps",
        save_steps=training.checkpoint_steps,
        save_total_limit=training.keep_checkpoints,
        eval_strategy="steps" if eval_rows is not None else "no",
        eval_steps=eval_steps,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    trainer = QloraTrainer(
        model=model,
        args=args,
        train_dataset=_to_dataset(train_rows),
        eval_dataset=_to_dataset(eval_rows) if eval_rows is not None else None,
        processing_class=tokenizer,
    )
    # The console printers would only duplicate our events into the log.
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    tokens = trainer.trained_tokens
    callback = EventCallback(emit, cancel, tokens, resume_from=launch.resume_checkpoint)
    trainer.add_callback(callback)
    return trainer, tokens, callback


class QloraTrainer(SFTTrainer):
    """trl's SFTTrainer, counting the tokens each micro-step trains, and resuming in the adapter's
    own precision."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.trained_tokens = TokenCounter()

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> Any:
        self.trained_tokens.add(inputs)
        return super().training_step(model, inputs, num_items_in_batch)

    def create_model_card(self, *args: Any, **kwargs: Any) -> None:
        """trl writes its template card into the checkpoints folder at every save; the adapter's card is
        ours, written by the bot once the job succeeded (bot/jobs/folder_artifacts.py)."""

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        """peft writes its template card into every checkpoint it saves; a checkpoint is for resuming
        (weights, optimizer, trainer state), and resuming never reads the card, so it goes."""
        super()._save_checkpoint(model, trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        (Path(self._get_output_dir(trial=trial)) / name / MODEL_CARD).unlink(missing_ok=True)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        """trl keeps a 4-bit model's LoRA weights in bf16 (the QLoRA paper's choice), but peft's
        load_adapter casts a checkpoint's bf16 weights to float32: a resumed job would then train in
        another precision (and memory) than the run it continues. Each trainable weight goes back to
        the dtype it had before the load."""
        target = self.model if model is None else model
        dtypes = {name: param.dtype for name, param in target.named_parameters() if param.requires_grad}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        for name, param in target.named_parameters():
            if name in dtypes and param.dtype != dtypes[name]:
                param.data = param.data.to(dtypes[name])


def _checkpointing_args(enabled: bool) -> dict[str, Any]:
    """transformers 5.2x renamed gradient_checkpointing to activation_checkpointing; accept both releases."""
    names = {field.name for field in dataclasses.fields(SFTConfig)}
    prefix = "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing"
    return {prefix: enabled, f"{prefix}_kwargs": {"use_reentrant": False}}


def _to_dataset(rows: TokenizedRows) -> Dataset:
    columns: dict[str, list] = {"input_ids": rows.input_ids}
    if rows.completion_mask is not None:
        columns["completion_mask"] = rows.completion_mask
    return Dataset.from_dict(columns)
