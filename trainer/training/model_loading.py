"""Load the base model in 4-bit NF4 with double quantization, its tokenizer, and attach LoRA.

Security rules from DESIGN.md apply here: never trust_remote_code, safetensors only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from protocol.errors import UserError
from protocol.job_spec import LoraSpec
from protocol.sources import source_kind

log = logging.getLogger(__name__)


def compute_dtype() -> torch.dtype:
    """bf16 where the GPU has it, fp16 on older GPUs; the CPU computes in float32 (bf16 is slow there)."""
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def runtime_description(training_args: Any) -> dict[str, str]:
    """Where and how the job ran, recorded beside the adapter (a 4-bit CPU run is not a GPU run)."""
    device = f"cuda:{torch.cuda.get_device_name()}" if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "compute_dtype": str(compute_dtype()).removeprefix("torch."),
        "optimizer": str(getattr(training_args.optim, "value", training_args.optim)),
        "torch": torch.__version__,
    }


def load_tokenizer(base_model: str, revision: str | None) -> Any:
    from transformers import AutoTokenizer

    with _explained_load_errors(base_model):
        tokenizer = AutoTokenizer.from_pretrained(base_model, revision=revision, trust_remote_code=False)
    if tokenizer.pad_token is None:
        # The 2023 recipe's choice; harmless with packing (no padding inside rows) and labels at -100.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_quantized_model(base_model: str, revision: str | None) -> Any:
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        # Explicit: bitsandbytes defaults to float32 compute, a slow path on GPUs (FACTS.md).
        bnb_4bit_compute_dtype=dtype,
    )
    with _explained_load_errors(base_model):
        model = AutoModelForCausalLM.from_pretrained(
            base_model,
            revision=revision,
            quantization_config=quantization,
            dtype=dtype,
            use_safetensors=True,
            trust_remote_code=False,
            device_map={"": 0} if torch.cuda.is_available() else None,
        )
    # The KV cache is useless in training, and packed rows are only kept apart by the block-diagonal
    # mask that transformers builds when no cache is used (FACTS.md).
    model.config.use_cache = False
    return model


def resolved_revision(model: Any) -> str | None:
    """The commit the Hub weights came from (None for a local folder), to pin in the job record."""
    return getattr(model.config, "_commit_hash", None)


def add_lora(model: Any, lora: LoraSpec) -> Any:
    """Freeze the base and attach LoRA. Gradient checkpointing is the trainer's to switch on (its memory plan
    needs the adapter's size, known only from here on)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if compute_dtype() == torch.float16:
        # The 2023 recipe's upcast of norms and embeddings to float32 keeps fp16 training stable.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    else:
        # In bf16 (and float32 on the CPU) the upcast buys nothing: the frozen norm weights would turn every
        # norm output float32, doubling those activations and each LoRA dropout copy of them. peft freezes
        # the base itself.
        model.requires_grad_(False)
    config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.resolved_alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules) if lora.target_modules else "all-linear",
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return get_peft_model(model, config)
    except ValueError as error:
        if lora.target_modules:
            raise UserError(
                f"LoRA target_modules {list(lora.target_modules)} do not match the model's layers: {error}",
                "name linear layers of this model (e.g. q_proj, v_proj) or leave target_modules unset",
            ) from None
        raise


class _explained_load_errors:
    """Turn from_pretrained's many failure types into UserErrors that say what to do."""

    def __init__(self, base_model: str) -> None:
        self.base_model = base_model

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, error: BaseException | None, _traceback: Any) -> bool:
        if error is None or not isinstance(error, (OSError, ValueError)):
            return False
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError, RevisionNotFoundError

        name = self.base_model
        # Only the wording of the error depends on it: from_pretrained has already chosen what it loaded.
        looks_local = source_kind(name, existing_paths=True) == "path"
        if isinstance(error, GatedRepoError):
            raise UserError(
                f"base model {name} is gated on the Hub",
                "accept its license on the model page, then set HF_TOKEN to a token of that account",
            ) from None
        if isinstance(error, RevisionNotFoundError):
            raise UserError(f"base model {name} has no such revision", "check the revision name") from None
        if isinstance(error, RepositoryNotFoundError):
            raise UserError(
                f"base model {name} was not found on the Hub",
                "check the model id; for a private model set HF_TOKEN; or pass a local folder",
            ) from None
        message = str(error)
        if looks_local and not Path(name).expanduser().exists():
            raise UserError(
                f"base model folder {name} does not exist", "pass an existing folder or a Hub model id"
            ) from None
        if "safetensors" in message or "use_safetensors" in message:
            raise UserError(
                f"base model {name} has no safetensors weights",
                "qlora-bot loads safetensors only (pickled .bin weights can run code); convert the weights",
            ) from None
        log.warning("loading %s failed: %s", name, message)
        raise UserError(
            f"could not load base model {name}: {message.splitlines()[0][:300]}",
            "check the model id or folder; if the Hub is unreachable, download the model to a local folder",
        ) from None
