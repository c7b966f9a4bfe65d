"""Many LoRA adapters on one 4-bit base, without peft at serving time: each adapter is a slot of stacks.

Every linear layer of the decoder holds all resident adapters' A and B matrices stacked by slot, and each
batch row names its slot: switching adapters is writing an index, and a batch mixing adapters costs one
gathered matmul pair per layer. peft's own switch walks every module (~19 ms on a 7B model) and its mixed
batches split the rows per adapter in Python. Slot 0 is all zeros: a base-model row in a mixed batch adds
exactly nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from protocol.errors import UserError

BASE_SLOT = 0
_PEFT_PREFIX = "base_model.model."
_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
REPAIR_HINT = "check that the adapter was trained on this base model and that its folder is complete"


def slot_ids(slots: Sequence[int | None]) -> list[int]:
    """Each row's slot, the zero slot for a base-model row (None)."""
    return [BASE_SLOT if slot is None else slot for slot in slots]


class LoraRouting:
    """What every LoRA layer reads at each forward: the adapter slot of each batch row. One per base model.

    `slot` set: every row uses that adapter (its matrices are read in place). Else `row_slots` set: each
    row gathers its own. Neither: the base model alone, LoRA skipped.
    """

    def __init__(self) -> None:
        self.slot: int | None = None
        self.row_slots: torch.Tensor | None = None  # (rows,) int64
        # Bumped whenever stacked tensors are reallocated: captured CUDA graphs hold their old addresses.
        self.version = 0

    def route(self, slots: list[int | None], device: torch.device) -> None:
        """Route rows with these slots (None: the base model)."""
        distinct = set(slots)
        self.slot, self.row_slots = None, None
        if distinct == {None}:
            return
        if len(distinct) == 1:
            self.slot = slots[0]
        else:
            self.row_slots = torch.tensor(slot_ids(slots), device=device)

    def clear(self) -> None:
        self.slot, self.row_slots = None, None


class LoraLinear(nn.Module):
    """A base linear layer (4-bit or not) plus the stacked LoRA matrices of every resident adapter."""

    def __init__(self, base: nn.Module, routing: LoraRouting) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        self.in_features: int = base.in_features
        self.out_features: int = base.out_features
        self.lora_a: torch.Tensor | None = None  # (slots, in, rank): x @ A^T, transposed once at load
        self.lora_b: torch.Tensor | None = None  # (slots, rank, out): with the adapter's scale folded in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        routing = self.routing
        if self.lora_a is None or self.lora_b is None or (routing.slot is None and routing.row_slots is None):
            return y
        if routing.slot is not None:  # one adapter for every row: two matmuls, the second adds in place
            flat = x.reshape(-1, self.in_features).to(self.lora_a.dtype)
            out = y.view(-1, self.out_features)
            if out.dtype == flat.dtype:
                out.addmm_(flat @ self.lora_a[routing.slot], self.lora_b[routing.slot])
                return y
            return y + ((flat @ self.lora_a[routing.slot]) @ self.lora_b[routing.slot]).view(y.shape).to(
                y.dtype
            )
        rows = x.shape[0]
        a = self.lora_a.index_select(0, routing.row_slots)
        b = self.lora_b.index_select(0, routing.row_slots)
        xa = torch.bmm(x.reshape(rows, -1, self.in_features).to(a.dtype), a)
        out = y.view(rows, -1, self.out_features)
        if out.dtype == xa.dtype:
            out.baddbmm_(xa, b)
            return y
        return y + torch.bmm(xa, b).view(y.shape).to(y.dtype)


@dataclass(frozen=True)
class AdapterWeights:
    """An adapter read from disk and checked against the model, ready to be written into a slot."""

    matrices: dict[str, tuple[torch.Tensor, torch.Tensor]]  # module name -> (A^T (in, r), B^T*scale (r, out))
    nbytes: int

    @property
    def rank(self) -> int:
        return max(a.shape[1] for a, _ in self.matrices.values())


class LoraBank:
    """The LoRA layers of one base model and which slot holds which adapter."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, usual_slots: int) -> None:
        self.routing = LoraRouting()
        self.dtype = dtype
        self.usual_slots = usual_slots  # the cap on resident adapters, plus the zero slot
        self.layers: dict[str, LoraLinear] = _wrap_decoder_linears(model, self.routing)
        # Layers reading one input share stacked tensors (each layer's are views): the serving kernels run
        # a group's LoRA as one product. Every layer starts alone.
        self.groups: dict[str, tuple[str, ...]] = {name: (name,) for name in self.layers}
        self.stacks: dict[tuple[str, ...], tuple[torch.Tensor, torch.Tensor]] = {}  # group -> (A^T's, B^T's)
        self.kernel_rank = False  # ranks rounded up to a power of two >= 16, as the kernels tile them
        self.capacity = 1  # slots allocated in every stacked tensor, the zero slot included
        self.rank = 0
        self._free: list[int] = []  # allocated slots no adapter holds

    def join(self, groups: Sequence[Sequence[str]]) -> None:
        """Store each group's layers (one input, one input size) side by side, and size ranks for the
        kernels. Called before any adapter is loaded."""
        if self.stacks:
            raise RuntimeError("LoRA groups are set before the first adapter is loaded")
        for group in groups:
            members = tuple(group)
            if len({self.layers[name].in_features for name in members}) != 1:
                raise ValueError(f"layers of a LoRA group must share their input size: {members}")
            for name in members:
                self.groups[name] = members
        self.kernel_rank = True

    def stack(self, name: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stacked (slots, in, members * rank) A^T's and (slots, rank, total out) B^T's of the group
        holding layer `name`, or None while no adapter targets that group."""
        return self.stacks.get(self.groups[name])

    def read(self, folder: Path, device: torch.device) -> AdapterWeights:
        """An adapter's matrices checked against this model; raises UserError naming what does not fit."""
        config = _adapter_config(folder)
        tensors = load_file(str(folder / "adapter_model.safetensors"), device=str(device))
        parts: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in tensors.items():
            match = _KEY.match(key.removeprefix(_PEFT_PREFIX))
            if match is None:
                raise UserError(
                    f"adapter {folder} holds {key!r}, which is not a LoRA matrix of a linear layer "
                    "(modules_to_save, embeddings and DoRA are not served)",
                    "serve adapters trained with plain LoRA on linear layers, as qlora-bot trains them",
                )
            parts.setdefault(match["module"], {})[match["part"]] = tensor
        matrices, nbytes = {}, 0
        for module, pair in parts.items():
            layer = self.layers.get(module)
            if layer is None:
                raise UserError(
                    f"adapter {folder} has LoRA weights for {module}, which is not a linear layer of this "
                    "model's decoder",
                    REPAIR_HINT,
                )
            if set(pair) != {"A", "B"}:
                missing = "B" if "A" in pair else "A"
                raise UserError(f"adapter {folder} lacks lora_{missing} for {module}", REPAIR_HINT)
            a, b = pair["A"], pair["B"]
            rank = a.shape[0]
            if a.shape != (rank, layer.in_features) or b.shape != (layer.out_features, rank):
                raise UserError(
                    f"size mismatch for {module}: the adapter has A {tuple(a.shape)} and B {tuple(b.shape)}, "
                    f"this model's layer is {layer.in_features} -> {layer.out_features}",
                    REPAIR_HINT,
                )
            scale = _scale(config, module, rank)
            a_t = a.t().to(self.dtype).contiguous()
            b_t = (b.float() * scale).t().to(self.dtype).contiguous()
            matrices[module] = (a_t, b_t)
            nbytes += a_t.numel() * a_t.element_size() + b_t.numel() * b_t.element_size()
        if not matrices:
            raise UserError(f"adapter {folder} has no LoRA weights", REPAIR_HINT)
        return AdapterWeights(matrices, nbytes)

    def add(self, weights: AdapterWeights) -> int:
        """Write an adapter into a free slot and return the slot."""
        # Doubling keeps reallocations rare; past the usual cap (a batch may hold more adapters for a
        # moment, before eviction) the bank grows one slot at a time.
        capacity = self.capacity
        if not self._free:
            capacity = max(self.capacity + 1, min(self.capacity * 2, self.usual_slots))
        rank = max(self.rank, weights.rank)
        if self.kernel_rank:
            rank = max(16, 1 << (rank - 1).bit_length())
        new_layers = [name for name in weights.matrices if self.layers[name].lora_a is None]
        if capacity != self.capacity or rank != self.rank or new_layers:
            self._grow(capacity, rank, new_layers)
        slot = self._free.pop(0)
        for name, layer in self.layers.items():
            if layer.lora_a is None or layer.lora_b is None:
                continue
            layer.lora_a[slot].zero_()
            layer.lora_b[slot].zero_()
            pair = weights.matrices.get(name)
            if pair is not None:
                a_t, b_t = pair
                layer.lora_a[slot, :, : a_t.shape[1]].copy_(a_t)
                layer.lora_b[slot, : b_t.shape[0]].copy_(b_t)
        return slot

    def remove(self, slot: int) -> None:
        """Free a slot (its matrices are overwritten by the next adapter to take it)."""
        self._free = sorted([*self._free, slot])

    def _grow(self, capacity: int, rank: int, new_layers: list[str]) -> None:
        """Reallocate the stacked tensors with more slots or a larger rank, keeping what is there; give
        `new_layers` (targeted for the first time) their own, zero for the adapters already resident."""
        for group in dict.fromkeys(self.groups.values()):
            layers = [self.layers[name] for name in group]
            if all(layer.lora_a is None for layer in layers) and not set(group) & set(new_layers):
                continue  # no adapter targets it: its forward stays the base layers' alone
            device = _device_of(layers[0].base)
            total_out = sum(layer.out_features for layer in layers)
            a = torch.zeros(
                capacity, layers[0].in_features, len(group) * rank, dtype=self.dtype, device=device
            )
            b = torch.zeros(capacity, rank, total_out, dtype=self.dtype, device=device)
            start = 0
            for index, layer in enumerate(layers):
                a_view = a[:, :, index * rank : (index + 1) * rank]
                b_view = b[:, :, start : start + layer.out_features]
                if layer.lora_a is not None and layer.lora_b is not None:
                    a_view[: self.capacity, :, : self.rank].copy_(layer.lora_a)
                    b_view[: self.capacity, : self.rank].copy_(layer.lora_b)
                layer.lora_a, layer.lora_b = a_view, b_view
                start += layer.out_features
            self.stacks[group] = (a, b)
        self._free = sorted([*self._free, *range(self.capacity, capacity)])
        self.capacity, self.rank = capacity, rank
        self.routing.version += 1


def _wrap_decoder_linears(model: nn.Module, routing: LoraRouting) -> dict[str, LoraLinear]:
    """Put a LoraLinear around every linear layer of the decoder (not the head: adapters do not train it)."""
    found = [
        (name, module)
        for name, module in model.named_modules()
        if _is_linear(module) and name.split(".")[-1] != "lm_head" and ".layers." in f".{name}"
    ]
    layers = {}
    for name, module in found:
        parent_name, _, child = name.rpartition(".")
        wrapped = LoraLinear(module, routing)
        setattr(model.get_submodule(parent_name), child, wrapped)
        layers[name] = wrapped
    return layers


def _is_linear(module: nn.Module) -> bool:
    # bitsandbytes' Linear4bit and Linear8bitLt subclass nn.Linear.
    return isinstance(module, nn.Linear)


def _device_of(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


def _adapter_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "adapter_config.json").read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read {folder / 'adapter_config.json'}: {error}", REPAIR_HINT) from None
    if config.get("peft_type", "LORA") != "LORA":
        raise UserError(f"adapter {folder} is a {config['peft_type']} adapter, not LoRA", REPAIR_HINT)
    if config.get("use_dora"):
        raise UserError(f"adapter {folder} uses DoRA, which qlora-bot does not serve", "serve a plain LoRA")
    if config.get("modules_to_save"):
        raise UserError(
            f"adapter {folder} also trains whole modules ({config['modules_to_save']}), which are not served",
            "serve adapters without modules_to_save",
        )
    if config.get("bias", "none") != "none":
        raise UserError(
            f"adapter {folder} trains biases, which are not served", "serve a LoRA with bias='none'"
        )
    return config


def _scale(config: dict[str, Any], module: str, rank: int) -> float:
    """peft's scaling: alpha / r, or alpha / sqrt(r) with rsLoRA; per-module alphas from alpha_pattern."""
    alpha = float(config.get("lora_alpha", 8))
    for pattern, value in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?{pattern}$", module):
            alpha = float(value)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
