"""Training throughput: the 2023 QLoRA recipe, qlora-bot's default path and Unsloth, on the same data.

Builds a random-init Llama-2-7B shape (4-bit NF4 base when loaded) and a synthetic text dataset (one word
one token; lognormal lengths, median 350, cap 2000), then runs each recipe in its own process, one after
another: (1) the 2023 recipe as the seed guide wrote it, on today's APIs (fp16 compute, batch 1 x
accumulation 4, q/v LoRA r16, gradient checkpointing, 8-bit AdamW, max length 1024, no packing);
(2) qlora-bot's default, through `python -m trainer.training.worker` with a default JobSpec, and again in its
16 GiB mode (`qlora-bot:memory_limit_gib=16`; `--recipes` takes any `qlora-bot:FIELD=VALUE[:...]` attempt);
(3) Unsloth, when it is importable (all-linear r16, its own checkpointing, packing to qlora-bot's
length; QLORA_BOT_UNSLOTH_SITE names a folder put first on its path), else "absent".
Reports real (non-padding) tokens/s in steady state (after the warm-up steps), peak GPU memory and time
from process start to the first optimizer step; prints a table, writes bench/out/train_throughput.json
and appends the table to bench/RESULTS.md.

    python bench/train_throughput.py [--steps 12] [--warmup 3] [--work /tmp/bench-train]
    python bench/train_throughput.py --shape tiny --steps 4 --warmup 1   # plumbing check on a CPU

Needs trl, bitsandbytes, datasets and liger-kernel beside torch/transformers/peft, and Unsloth for (3):
bench/README.md packs them for a GPU machine without network.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.random_llama import FIRST_WORD, SHAPES, build_random_llama, word  # noqa: E402

RECIPES = ("2023", "qlora-bot", "unsloth")
# The default run: qlora-bot twice, as configured and in its 16 GiB memory mode (a 24 GB card).
DEFAULT_RUN = ("2023", "qlora-bot", "qlora-bot:memory_limit_gib=16", "unsloth")
MEDIAN_TOKENS, MAX_TOKENS = 350, 2000


def synthetic_dataset(path: Path, vocab: int, rows: int, seed: int = 0) -> Path:
    """`rows` texts of random words with lognormal lengths (median 350 tokens, at most 2000)."""
    if path.exists():
        return path
    rng = random.Random(seed)
    with path.open("w", encoding="utf-8") as out:
        for _ in range(rows):
            length = min(MAX_TOKENS, max(8, round(rng.lognormvariate(math.log(MEDIAN_TOKENS), 0.6))))
            text = " ".join(word(rng.randrange(FIRST_WORD, vocab)) for _ in range(length))
            out.write(json.dumps({"text": text}) + "\n")
    return path


# --- the parent: run every recipe in its own process, report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-train"))
    parser.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    parser.add_argument("--steps", type=int, default=12, help="optimizer steps per recipe")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the steady-state rate")
    parser.add_argument(
        "--recipes",
        default=",".join(DEFAULT_RUN),
        help="comma-separated; qlora-bot:FIELD=VALUE[:FIELD=VALUE] sets TrainingSpec fields (an attempt)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = build_random_llama(args.work / f"llama-{args.shape}-random", SHAPES[args.shape])
    data = synthetic_dataset(args.work / "synthetic.jsonl", SHAPES[args.shape]["vocab_size"], rows=2000)
    if args.child:
        name, *overrides = args.child.split(":")
        args.overrides = dict(_parse_override(item) for item in overrides)
        result = CHILDREN[name](model_dir, data, args)
        args.out.write_text(json.dumps(result))
        return 0
    results = {}
    for recipe in args.recipes.split(","):
        results[recipe] = run_recipe(recipe, args)
        print(f"{recipe}: {results[recipe]}", flush=True)
    environment = describe_environment(args, results.get("unsloth", {}).get("versions"))
    table = report(results, environment)
    print(table)
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_throughput.json").write_text(
        json.dumps({"results": results, "environment": environment}, indent=2)
    )
    if args.shape == "7b":
        with (ROOT / "bench" / "RESULTS.md").open("a") as results_file:
            results_file.write("\n" + table)
    return 0


def _parse_override(item: str) -> tuple[str, Any]:
    key, _, value = item.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def run_recipe(recipe: str, args: argparse.Namespace) -> dict[str, Any]:
    env = dict(os.environ)
    if recipe == "unsloth":
        # Unsloth pins older trl and datasets than qlora-bot: its site folder goes first (bench/README.md).
        site = os.environ.get("QLORA_BOT_UNSLOTH_SITE")
        if site:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [site, env.get("PYTHONPATH")]))
        # Fail rather than quietly train on the CPU; keep Unsloth's generated code out of the repository.
        env["UNSLOTH_DISABLE_CPU_FALLBACK"] = "1"
        env.setdefault("UNSLOTH_COMPILE_LOCATION", str(args.work / "unsloth_compiled_cache"))
        probe = [
            sys.executable,
            "-c",
            "import importlib.util, sys; sys.exit(not importlib.util.find_spec('unsloth'))",
        ]
        if subprocess.run(probe, env=env).returncode != 0:
            return {"status": "absent"}
    out = args.work / f"{recipe}.json"
    out.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--child", recipe, "--out", str(out), "--work", str(args.work)]
    command += ["--shape", args.shape, "--steps", str(args.steps), "--warmup", str(args.warmup)]
    log = args.work / f"{recipe}.log"
    with log.open("w") as log_file:
        code = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0 or not out.exists():
        return {"status": f"failed (exit {code}, see {log})"}
    return {"status": "ok", **json.loads(out.read_text())}


def describe_environment(args: argparse.Namespace, unsloth_versions: str | None) -> dict[str, str]:
    import torch

    versions = {}
    for name in ("torch", "transformers", "peft", "trl", "bitsandbytes", "liger_kernel"):
        try:
            versions[name] = importlib.metadata.version(name.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "absent"
    versions["unsloth"] = unsloth_versions or "absent"
    return {
        "date": datetime.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU",
        "shape": args.shape,
        "steps": f"{args.steps} ({args.warmup} warm-up)",
        **versions,
    }


def report(results: dict[str, dict[str, Any]], environment: dict[str, str]) -> str:
    old = results.get("2023", {}).get("tokens_per_s")
    unsloth = results.get("unsloth", {}).get("tokens_per_s")
    lines = [
        f"### Training throughput, {environment['date']}: {environment['gpu']}",
        "",
        ", ".join(f"{name} {environment[name]}" for name in ("torch", "transformers", "peft", "trl"))
        + f", bitsandbytes {environment['bitsandbytes']}, unsloth {environment['unsloth']}, liger-kernel "
        f"{environment['liger_kernel']}; random-init Llama, {environment['shape']} shape, NF4 base, "
        f"synthetic text (median {MEDIAN_TOKENS} tokens), {environment['steps']} optimizer steps.",
        "",
        "| recipe | tokens/s (steady) | vs 2023 | vs Unsloth | peak GiB | start to first step "
        "| checkpointing |",
        "|---|---|---|---|---|---|---|",
    ]
    for recipe, result in results.items():
        if result.get("status") != "ok":
            lines.append(f"| {recipe} | {result.get('status')} |  |  |  |  |  |")
            continue
        rate = result["tokens_per_s"]
        versus_old = f"{rate / old:.1f}x" if old else ""
        versus_unsloth = f"{rate / unsloth:.2f}x" if unsloth else ""
        lines.append(
            f"| {recipe} | {rate:,.0f} | {versus_old} | {versus_unsloth} | {result['peak_gib']:.1f} | "
            f"{result['first_step_s']:.0f} s | {result.get('checkpointing', '')} |"
        )
    return "\n".join(lines) + "\n"


# --- the children: one recipe each


def steady_rate(marks: list[tuple[float, int]], warmup: int) -> float:
    """Tokens/s between the end of warm-up step `warmup` and the last step. marks: (time, tokens so far)
    at the end of each optimizer step, in order."""
    start = marks[min(warmup, len(marks) - 2)]
    end = marks[-1]
    return (end[1] - start[1]) / (end[0] - start[0])


def run_2023(model_dir: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The seed guide's recipe on trl 1.x / transformers 5 (FACTS.md lists what changed)."""
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig
    from trl import SFTConfig, SFTTrainer

    cuda = torch.cuda.is_available()
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_compute_dtype=torch.float16 if cuda else torch.float32,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
    )
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), quantization_config=quantization)
    model.config.use_cache = False
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "right"
    lora = LoraConfig(lora_alpha=16, lora_dropout=0.1, r=16, bias="none", task_type="CAUSAL_LM")
    config = SFTConfig(
        output_dir=str(args.work / "out-2023"),
        per_device_train_batch_size=1,
        gradient_accumulation_steps=4,
        gradient_checkpointing=True,
        bf16=cuda,
        use_cpu=not cuda,
        optim="adamw_bnb_8bit" if cuda else "adamw_torch",
        logging_steps=25,
        learning_rate=2e-4,
        max_grad_norm=0.3,
        warmup_steps=0.03,
        max_steps=args.steps,
        report_to="none",
        save_strategy="no",
        dataset_text_field="text",
        max_length=1024,
        packing=False,
    )
    trainer = SFTTrainer(
        model=model,
        train_dataset=load_dataset("json", data_files=str(data), split="train"),
        peft_config=lora,
        processing_class=tokenizer,
        args=config,
    )
    return {**_measured(trainer, args), "checkpointing": "on"}


def run_unsloth(model_dir: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Unsloth's own fast path: all-linear r16, its checkpointing, packing to qlora-bot's default length."""
    from unsloth import FastLanguageModel  # noqa: I001 - Unsloth patches transformers when imported first

    import torch
    from datasets import load_dataset
    from trl import SFTConfig, SFTTrainer

    from protocol.job_spec import TrainingSpec

    defaults = TrainingSpec()
    model, tokenizer = FastLanguageModel.from_pretrained(
        str(model_dir), max_seq_length=defaults.max_length, load_in_4bit=True, dtype=torch.bfloat16
    )
    model = FastLanguageModel.get_peft_model(
        model,
        r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        use_gradient_checkpointing="unsloth",
    )
    config = SFTConfig(
        output_dir=str(args.work / "out-unsloth"),
        per_device_train_batch_size=defaults.batch_size,
        gradient_accumulation_steps=defaults.grad_accum,
        bf16=True,
        optim="adamw_8bit",
        learning_rate=defaults.learning_rate,
        max_steps=args.steps,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        dataset_text_field="text",
        max_length=defaults.max_length,
        packing=True,
    )
    trainer = SFTTrainer(
        model=model,
        train_dataset=load_dataset("json", data_files=str(data), split="train"),
        processing_class=tokenizer,
        args=config,
    )
    import datasets
    import trl
    import unsloth

    versions = f"{unsloth.__version__} (its trl {trl.__version__}, datasets {datasets.__version__})"
    return {**_measured(trainer, args), "versions": versions, "checkpointing": "unsloth (offloaded)"}


class _CollatedTokens:
    """Wraps any trainer's collator to count real tokens on the host. Collation runs a batch or so ahead
    of training, which shifts the count by a constant and leaves the steady-state rate as it is."""

    def __init__(self, collator: Any) -> None:
        self.collator = collator
        self.tokens = 0

    def __call__(self, examples: list[dict]) -> Any:
        self.tokens += sum(len(example["input_ids"]) for example in examples)
        return self.collator(examples)


def _measured(trainer: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Train with a clock on every optimizer step; tokens counted on the host as the collator sees them."""
    import torch
    from transformers import TrainerCallback

    counter = _CollatedTokens(trainer.data_collator)
    trainer.data_collator = counter
    marks: list[tuple[float, int]] = []

    class Clock(TrainerCallback):
        def on_step_end(self, *_: Any, **__: Any) -> None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            marks.append((time.monotonic(), counter.tokens))

    trainer.add_callback(Clock())
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    return {
        "tokens_per_s": steady_rate(marks, args.warmup),
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "first_step_s": marks[0][0] - PROCESS_START,
        "tokens": counter.tokens,
    }


def run_qlora_bot(model_dir: Path, data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The default JobSpec through the real worker; its progress events carry the token count."""
    from protocol.events import Phase, Progress, decode_event
    from protocol.job_spec import DatasetSpec, JobSpec, TrainingSpec
    from protocol.launch import Launch

    job = args.work / "out-qlora-bot"
    job.mkdir(parents=True, exist_ok=True)
    spec = JobSpec(
        base_model=str(model_dir),
        dataset=DatasetSpec(source=str(data), kind="file"),
        training=TrainingSpec(max_steps=args.steps, checkpoint_steps=10_000, **args.overrides),
    )
    (job / "spec.json").write_text(spec.to_json())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    worker = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "trainer.training.worker",
            str(job / "spec.json"),
            *Launch(job_dir=str(job)).argv(),
        ],
        stdout=subprocess.PIPE,
        stderr=(job / "worker.log").open("w"),
        env=env,
        cwd=ROOT,
    )
    assert worker.stdout is not None
    marks: list[tuple[float, int]] = []
    peak, plan = 0.0, ""
    for line in worker.stdout:
        event = decode_event(line.decode())
        if isinstance(event, Progress):
            marks.append((time.monotonic(), event.tokens_seen))
            peak = max(peak, event.gpu_mem_gib or 0.0)
        elif isinstance(event, Phase) and (event.message or "").startswith("gradient checkpointing"):
            plan = event.message.removeprefix("gradient checkpointing ")
    if worker.wait() != 0:
        raise SystemExit(f"the worker failed; see {job / 'worker.log'}")
    return {
        "tokens_per_s": steady_rate(marks, args.warmup),
        "peak_gib": peak,
        "first_step_s": marks[0][0] - PROCESS_START,
        "tokens": marks[-1][1],
        "checkpointing": plan,
    }


CHILDREN = {"2023": run_2023, "qlora-bot": run_qlora_bot, "unsloth": run_unsloth}
PROCESS_START = time.monotonic()  # a child's clock starts with its process: loading counts

if __name__ == "__main__":
    sys.exit(main())
