"""What is resident: each base model once in 4-bit with its tokenizer, and an LRU of LoRA adapters on it.

Adapters share one PeftModel per base, named by a hash of their folder; never merged into the 4-bit base.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer

from trainer.chat_template import choose_chat_template
from trainer.errors import UserError
from trainer.model_loading import load_quantized_model, load_tokenizer

log = logging.getLogger(__name__)

ADAPTER_HINT = "check the adapter path (/adapters lists the adapters this bot trained)"


@dataclass(eq=False)
class ResidentAdapter:
    path: str  # the resolved folder: the LRU key
    name: str  # peft's adapter name
    tokenizer: Any  # the adapter folder's tokenizer: it carries the chat template trained with
    template: str
    nbytes: int


@dataclass(eq=False)
class BaseModel:
    name: str
    model: Any  # a transformers model until the first adapter arrives, then the PeftModel around it
    tokenizer: Any
    template: str
    adapters: OrderedDict[str, ResidentAdapter] = field(default_factory=OrderedDict)  # oldest use first

    @property
    def has_peft(self) -> bool:
        return isinstance(self.model, PeftModel)

    @property
    def model_eos(self) -> Any:
        return getattr(self.model.generation_config, "eos_token_id", None)

    @property
    def max_positions(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)


def model_key(name: str) -> str:
    """One key per base model: a local folder by its resolved path, a Hub id as written."""
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


class Residency:
    """The loaded base models and their adapters. Used by the generation thread only."""

    def __init__(self, max_adapters: int, max_adapter_mb: float) -> None:
        self.max_adapters = max(1, max_adapters)
        self.max_adapter_bytes = int(max_adapter_mb * 2**20)
        self.bases: dict[str, BaseModel] = {}

    def base(self, name: str, announce: Callable[[], None]) -> BaseModel:
        """The resident base model, loading it (after `announce()`) the first time it is asked for."""
        key = model_key(name)
        if key not in self.bases:
            announce()
            tokenizer = load_tokenizer(name, None)
            model = load_quantized_model(name, None)
            model.config.use_cache = True  # the loader turns it off for training
            model.eval()
            model.requires_grad_(False)
            self.bases[key] = BaseModel(name, model, tokenizer, choose_chat_template(tokenizer)[0])
            log.info("loaded base model %s", name)
        return self.bases[key]

    def adapter(self, base: BaseModel, path: str, announce: Callable[[], None]) -> ResidentAdapter:
        """The resident adapter of folder `path` on `base` (loaded after `announce()` if needed), now the
        most recently used."""
        folder = _checked_adapter_folder(path, base.name)
        key = str(folder)
        resident = base.adapters.get(key)
        if resident is not None:
            base.adapters.move_to_end(key)
            return resident
        announce()
        tokenizer = _adapter_tokenizer(folder, base)
        own = getattr(tokenizer, "chat_template", None)
        template = own if isinstance(own, str) and own.strip() else base.template
        name = "a" + hashlib.sha1(key.encode()).hexdigest()[:12]  # peft names must not contain dots
        try:
            _attach(base, folder, name)
        except Exception as error:
            if base.model is None:
                del self.bases[model_key(base.name)]
            if not isinstance(error, (OSError, ValueError, RuntimeError, KeyError)):
                raise
            log.warning("loading adapter %s failed", key, exc_info=True)
            # Mostly an adapter of another base model (shape mismatch) or a damaged folder.
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = " ".join(lines[:2]) or type(error).__name__  # torch puts the mismatch on line 2
            raise UserError(
                f"could not load adapter {path} on {base.name}: {reason[:300]}",
                "check that the adapter was trained on this base model and that its folder is complete",
            ) from None
        nbytes = sum(
            p.numel() * p.element_size() for n, p in base.model.named_parameters() if f".{name}." in n
        )
        resident = ResidentAdapter(key, name, tokenizer, template, nbytes)
        base.adapters[key] = resident
        log.info("loaded adapter %s as %s (%.3f MB)", key, name, nbytes / 2**20)
        return resident

    def evict(self, base: BaseModel, keep: Iterable[str]) -> list[str]:
        """Delete least recently used adapters of `base` (never those in `keep`, peft names) until the caps
        hold. Returns the evicted folders."""
        keep = set(keep)
        evicted = []
        while self._over_caps(base):
            victim = next((a for a in base.adapters.values() if a.name not in keep), None)
            # peft cannot generate with zero adapters on a PeftModel, so the last one always stays.
            if victim is None or len(base.adapters) == 1:
                break
            if victim.name in base.model.active_adapters:
                # Switch first: deleting the active adapter makes peft pick one and warn about it.
                base.model.set_adapter(next(a.name for a in base.adapters.values() if a is not victim))
            base.model.delete_adapter(victim.name)
            del base.adapters[victim.path]
            evicted.append(victim.path)
            log.info("evicted adapter %s", victim.path)
        if evicted and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return evicted

    def _over_caps(self, base: BaseModel) -> bool:
        total = sum(adapter.nbytes for adapter in base.adapters.values())
        return len(base.adapters) > self.max_adapters or total > self.max_adapter_bytes

    def describe(self) -> dict[str, Any]:
        """What a Stats event reports."""
        adapters = [adapter for base in self.bases.values() for adapter in base.adapters.values()]
        return {
            "base_models": tuple(base.name for base in self.bases.values()),
            "adapters": tuple(adapter.path for adapter in adapters),
            "adapter_mb": round(sum(adapter.nbytes for adapter in adapters) / 2**20, 3),
        }


def _checked_adapter_folder(path: str, base_name: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"adapter folder {path} does not exist", ADAPTER_HINT)
    if not (folder / "adapter_config.json").is_file():
        raise UserError(f"{path} is not an adapter folder (it has no adapter_config.json)", ADAPTER_HINT)
    if not (folder / "adapter_model.safetensors").is_file():
        raise UserError(
            f"adapter {path} has no adapter_model.safetensors",
            "qlora-bot loads safetensors only (pickled .bin weights can run code); convert the adapter",
        )
    return folder.resolve()


def _adapter_tokenizer(folder: Path, base: BaseModel) -> Any:
    if not (folder / "tokenizer_config.json").is_file():
        return base.tokenizer  # adapters saved by other tools may come without one
    tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _attach(base: BaseModel, folder: Path, name: str) -> None:
    if base.has_peft:
        try:
            base.model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        except Exception:
            if name in base.model.peft_config and len(base.model.peft_config) > 1:
                base.model.delete_adapter(name)  # half-loaded: never leave it to answer later requests
            raise
        return
    try:
        base.model = PeftModel.from_pretrained(base.model, str(folder), adapter_name=name, is_trainable=False)
    except Exception:
        # from_pretrained injects LoRA layers into the base model in place before loading weights: after a
        # failure the base cannot be trusted to answer as itself, so it is dropped and reloaded when asked.
        base.model = None
        raise
    base.model.eval()
