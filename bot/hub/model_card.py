"""The model card (README.md) of an adapter: Hub metadata, then what it is, how it was trained and how to
use it. Written into the adapter folder when the job succeeds (bot/jobs/folder_artifacts.py: no Hub link) and
rendered again at publish time with the repo it is loaded from, in place of the README.md trl and peft write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protocol.job_folder import ADAPTER_CONFIG, AdapterRecord, library_json
from protocol.job_spec import DatasetSpec, JobSpec, LoraSpec, TrainingSpec
from protocol.sources import hub_id_problem, redact_url, source_kind

TAGS = ("peft", "lora", "qlora", "trl", "sft", "qlora-bot")
_METRICS = (  # (key in the trainer's metrics, label, format)
    ("final_loss", "Final train loss", "{:.4f}"),
    ("train_loss", "Mean train loss", "{:.4f}"),
    ("eval_loss", "Eval loss", "{:.4f}"),
    ("steps", "Optimizer steps", "{:,}"),
    ("epochs", "Epochs", "{:.2f}"),
    ("tokens", "Tokens trained on", "{:,}"),
    ("examples", "Train examples", "{:,}"),
    ("eval_examples", "Eval examples", "{:,}"),
    ("train_runtime_s", "Training time", "{:,.0f} s"),
    ("total_runtime_s", "Total job time", "{:,.0f} s"),
)


@dataclass(frozen=True)
class CardFacts:
    repo_id: str | None  # the Hub repo it is published to; None: the card of the local adapter folder
    name: str
    base_model: str  # a Hub id, or a local folder (then left out of the metadata)
    dataset: DatasetSpec | None
    lora: LoraSpec | None
    training: TrainingSpec | None
    metrics: Mapping[str, Any]
    runtime: Mapping[str, Any]
    data_format: str | None = None
    prompt_style: str = "chat"
    license: str | None = None
    chart_file: str | None = None  # the loss chart uploaded beside the card, if any
    base_revision: str | None = None  # the base model's commit the adapter was trained on


def card_facts(
    folder: Path,
    name: str,
    record: AdapterRecord | None,
    spec: JobSpec | None,
    metrics: Mapping[str, Any],
    *,
    repo_id: str | None = None,
    license: str | None = None,
) -> CardFacts:
    """The facts of an adapter folder's card; the same for the local card and the published one, which
    adds the repo (and the base model's license, which only the Hub knows)."""
    # The record's spec is the resolved one (the base revision pinned); the job's is what was asked.
    spec = record.spec if record is not None else spec
    base_model = spec.base_model if spec else base_from_adapter_config(folder)
    return CardFacts(
        repo_id=repo_id,
        name=name,
        base_model=base_model or "unknown",
        dataset=spec.dataset if spec else None,
        lora=spec.lora if spec else None,
        training=spec.training if spec else None,
        metrics=metrics,
        runtime=record.runtime if record is not None else {},
        data_format=record.data_format if record is not None else None,
        prompt_style=record.prompt_style if record is not None else "chat",
        license=license,
        base_revision=spec.base_revision if spec else None,
    )


def base_from_adapter_config(folder: Path) -> str | None:
    """The base model peft's adapter_config.json names (an adapter made elsewhere has no record)."""
    return library_json(folder / ADAPTER_CONFIG).get("base_model_name_or_path")


def is_hub_id(reference: str) -> bool:
    """owner/name, and not a folder that happens to exist here."""
    kind = source_kind(reference, existing_paths=True)
    return kind == "hub" and hub_id_problem(reference, owner_required=True, what="repo") is None


def render_card(facts: CardFacts) -> str:
    from huggingface_hub import ModelCardData

    hub_base = is_hub_id(facts.base_model)
    metadata = ModelCardData(
        library_name="peft",
        base_model=facts.base_model if hub_base else None,
        pipeline_tag="text-generation",
        tags=list(TAGS),
        datasets=[facts.dataset.source] if facts.dataset and _from_hub(facts.dataset) else None,
        license=facts.license,
    )
    sections = [
        f"---\n{metadata.to_yaml()}\n---",
        f"# {facts.name}",
        _summary(facts, hub_base),
        "## Usage\n\n" + _usage(facts),
        "## Training data\n\n" + _dataset(facts),
        "## Training procedure\n\n" + _hyperparameters(facts),
        "## Results\n\n" + _results(facts),
    ]
    return "\n\n".join(section for section in sections if section) + "\n"


def _summary(facts: CardFacts, hub_base: bool) -> str:
    base = (
        f"[{facts.base_model}](https://huggingface.co/{facts.base_model})"
        if hub_base
        else f"a local base model (`{Path(facts.base_model).name}`)"
    )
    return (
        f"A LoRA adapter for {base}, fine-tuned with QLoRA (4-bit NF4 base with double quantization, "
        "LoRA adapters trained in higher precision) by qlora-bot with transformers, "
        "trl and peft. Only the adapter is stored here: load it on top of the base model."
    )


def _usage(facts: CardFacts) -> str:
    if facts.prompt_style == "raw":
        prompt = (
            'inputs = tokenizer("Your prompt", return_tensors="pt").to(model.device)\n'
            "outputs = model.generate(**inputs, max_new_tokens=256)\n"
        )
    else:
        prompt = (
            'messages = [{"role": "user", "content": "Hello!"}]\n'
            "inputs = tokenizer.apply_chat_template(\n"
            '    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"\n'
            ").to(model.device)\n"
            "outputs = model.generate(**inputs, max_new_tokens=256)\n"
        )
    # The local card names the folder it lies in, never its path on this machine (folders move).
    where, local = f'"{facts.repo_id}"', ""
    if facts.repo_id is None:
        where, local = "ADAPTER", 'ADAPTER = "path/to/this/folder"  # the adapter folder of this card\n'
    code = (
        "from peft import AutoPeftModelForCausalLM\n"
        "from transformers import AutoTokenizer\n\n"
        f"{local}"
        f'model = AutoPeftModelForCausalLM.from_pretrained({where}, device_map="auto")\n'
        f"tokenizer = AutoTokenizer.from_pretrained({where})  # with the chat template used\n"
        f"{prompt}"
        'print(tokenizer.decode(outputs[0][inputs["input_ids"].shape[-1] :], skip_special_tokens=True))'
    )
    note = (
        "\n\n`AutoPeftModelForCausalLM` loads the base model named in `adapter_config.json`; pass "
        '`quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", '
        "bnb_4bit_use_double_quant=True)` to load "
        "it in 4-bit as it was trained."
    )
    return f"```python\n{code}\n```{note}"


def _dataset(facts: CardFacts) -> str:
    if facts.dataset is None:
        return "Not recorded."
    spec = facts.dataset
    if _from_hub(spec):
        where = f"[{spec.source}](https://huggingface.co/datasets/{spec.source})"
        extra = f", configuration `{spec.config}`" if spec.config else ""
        where += f" (split `{spec.split}`{extra})"
    elif spec.source.startswith(("https://", "http://")):
        where = f"`{redact_url(spec.source)}`"  # signed URLs carry credentials in the query
    else:
        where = f"a local file, `{Path(spec.source).name}`"  # never the local path
    data_format = facts.data_format or spec.format
    return f"- Dataset: {where}\n- Format: `{data_format}`"


def _from_hub(dataset: DatasetSpec) -> bool:
    """A Hub dataset by its kind (an upload's "upload/dataset.jsonl" has the shape of an id, too)."""
    return dataset.kind == "hub" and hub_id_problem(dataset.source, owner_required=True) is None


def _hyperparameters(facts: CardFacts) -> str:
    rows: list[tuple[str, Any]] = [
        ("base model revision", facts.base_revision or "–"),
        ("quantization", "4-bit NF4, double quantization (bitsandbytes)"),
        ("compute dtype", facts.runtime.get("compute_dtype", "–")),
        ("optimizer", facts.runtime.get("optimizer", "–")),
    ]
    if facts.lora is not None:
        lora = facts.lora
        modules = ", ".join(lora.target_modules) if lora.target_modules else "all linear layers"
        rows += [
            ("LoRA r", lora.r),
            ("LoRA alpha", lora.resolved_alpha),
            ("LoRA dropout", lora.dropout),
            ("LoRA target modules", modules),
        ]
    if facts.training is not None:
        rows += [
            (field.name, getattr(facts.training, field.name)) for field in dataclasses.fields(TrainingSpec)
        ]
    if facts.runtime.get("device"):
        rows.append(("trained on", facts.runtime["device"]))
    lines = ["| hyper-parameter | value |", "|---|---|"]
    lines += [f"| {name} | {_cell(value)} |" for name, value in rows]
    return "\n".join(lines)


def _results(facts: CardFacts) -> str:
    lines = ["| metric | value |", "|---|---|"]
    for key, label, fmt in _METRICS:
        value = facts.metrics.get(key)
        if value is not None:
            try:
                shown = fmt.format(value)
            except (TypeError, ValueError):  # a metric recorded by another version, in another type
                shown = _cell(value)
            lines.append(f"| {label} | {shown} |")
    text = "\n".join(lines) if len(lines) > 2 else "No metrics were recorded."
    if facts.chart_file:
        text += f"\n\n![Training and eval loss by step]({facts.chart_file})"
    return text


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    return str(value).replace("|", "\\|")
