"""Print the README's GPU memory table from the trainer's own memory plan (trainer/training/memory_plan.py).

    python bench/memory_table.py

No GPU or download is needed: the model shapes are the published configs' numbers, the 4-bit weights
are counted as bitsandbytes stores them (NF4 with double quantization for the linear layers; embeddings,
the output head and norms in bf16), and the default job is config.toml's [defaults] (r=16 on all linear
layers, dropout 0.05, 2 packed rows of 2048 tokens, 4 accumulated micro-steps).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.training.memory_plan import GIB, ModelShape, TrainingLoad, plan_memory

# NF4: 4 bits a weight, plus one 8-bit absmax per 64 weights and one fp32 constant per 256 absmax.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
LORA_R = 16
ROWS, ROW_TOKENS, ACCUMULATION = 2, 2048, 4
H200_FREE_GIB = 139.0
CARD_16_GIB = 16.0


@dataclass(frozen=True)
class Model:
    name: str
    shape: ModelShape
    tied: bool = False  # the output head shares the input embeddings' weights

    def linear_shapes(self) -> list[tuple[int, int]]:
        """(in, out) of every linear layer of one decoder layer: q, k, v, o, gate, up, down."""
        h, kv, inner = self.shape.hidden, self.shape.kv_width, self.shape.intermediate
        return [(h, h), (h, kv), (h, kv), (h, h), (h, inner), (h, inner), (inner, h)]

    def weight_bytes(self) -> int:
        """The 4-bit model as loaded: quantized linear layers, bf16 embeddings and output head."""
        linear = self.shape.layers * sum(i * o for i, o in self.linear_shapes())
        embeddings = (1 if self.tied else 2) * self.shape.vocab * self.shape.hidden
        return int(linear * NF4_BYTES_PER_WEIGHT + embeddings * 2)

    def lora_params(self) -> int:
        return self.shape.layers * sum(LORA_R * (i + o) for i, o in self.linear_shapes())


MODELS = [
    Model("1B (Llama-3.2-1B)", ModelShape(16, 2048, 8192, 512, 128256), tied=True),
    Model("3B (Llama-3.2-3B)", ModelShape(28, 3072, 8192, 1024, 128256), tied=True),
    Model("7B (Llama-2-7B)", ModelShape(32, 4096, 11008, 4096, 32000)),
    Model("7B (Mistral-7B)", ModelShape(32, 4096, 14336, 1024, 32000)),
    Model("7B (Qwen2.5-7B)", ModelShape(28, 3584, 18944, 512, 152064)),
    Model("8B (Llama-3.1-8B)", ModelShape(32, 4096, 14336, 1024, 128256)),
    Model("13B (Llama-2-13B)", ModelShape(40, 5120, 13824, 5120, 32000)),
]


def smallest_card_gib(model: Model, load: TrainingLoad, checkpointing: bool) -> float:
    """The least GPU memory (the 4-bit model, then what is free once it is loaded) on which the plan
    fits this setting at the job's own micro-step, in steps of 0.5 GiB."""
    weights = model.weight_bytes()
    free = 0.5
    while free < 512:
        plan = plan_memory(model.shape, load, weights, int(free * GIB), checkpointing=checkpointing)
        if plan.rows == load.rows and "may not fit" not in plan.reason:
            return weights / GIB + free
        free += 0.5
    raise ValueError(f"{model.name} needs more than 512 GiB")


def describe(model: Model, load: TrainingLoad, free_gib: float, limit_gib: float | None) -> str:
    plan = plan_memory(
        model.shape,
        load,
        model.weight_bytes(),
        int(free_gib * GIB),
        None if limit_gib is None else int(limit_gib * GIB),
    )
    checkpointing = "on" if plan.checkpointing else "off"
    return f"{plan.predicted_peak_bytes / GIB:.1f} (ckpt {checkpointing}, {plan.rows} x {ROW_TOKENS})"


def main() -> None:
    print(
        "| model | 4-bit weights | smallest GPU, checkpointing on | smallest GPU, checkpointing off | "
        "default on an H200 | --memory-limit-gib 16 |"
    )
    print("|---|---|---|---|---|---|")
    for model in MODELS:
        load = TrainingLoad(ROWS, ROW_TOKENS, ACCUMULATION, model.lora_params(), True, True)
        on = smallest_card_gib(model, load, checkpointing=True)
        off = smallest_card_gib(model, load, checkpointing=False)
        print(
            f"| {model.name} | {model.weight_bytes() / GIB:.1f} | {on:.1f} | {off:.1f} | "
            f"{describe(model, load, H200_FREE_GIB, None)} | "
            f"{describe(model, load, H200_FREE_GIB, CARD_16_GIB)} |"
        )
    print("\nGiB, as the plan predicts them (trainer/training/memory_plan.py, margins included); the")
    print("CUDA context (~0.5 GiB) comes on top. Last two columns: the predicted peak (the plan's")
    print("choice, rows x tokens a micro-step).")


if __name__ == "__main__":
    main()
