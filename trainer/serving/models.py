"""What is resident: each base model once in 4-bit with its tokenizer and decoder, and an LRU of LoRA
adapters on it, each in a slot of the base's LoRA bank (lora.py); never merged into the 4-bit base.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import AutoTokenizer

from protocol.errors import UserError
from trainer.data.chat_template import choose_chat_template
from trainer.serving.decoders import Decoder, HfDecoder
from trainer.serving.lora import LoraBank
from trainer.serving.static_decoder import StaticDecoder, unsupported_reason
from trainer.training.model_loading import load_quantized_model, load_tokenizer

log = logging.getLogger(__name__)

ADAPTER_HINT = "check the adapter path (/adapters lists the adapters this bot trained)"


@dataclass(eq=False)
class ResidentAdapter:
    path: str  # the resolved folder: the LRU key
    slot: int  # its slot in the base's LoRA bank
    tokenizer: Any  # the adapter folder's tokenizer: it carries the chat template trained with
    template: str
    nbytes: int


@dataclass(eq=False)
class BaseModel:
    name: str
    model: Any  # the transformers model, its decoder's linear layers wrapped by the bank
    tokenizer: Any
    template: str
    bank: LoraBank
    decoder: Decoder
    adapters: OrderedDict[str, ResidentAdapter] = field(default_factory=OrderedDict)  # oldest use first
    tokenizers: dict[str, Any] = field(default_factory=dict)  # adapters' tokenizers by their files' hash

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

    def __init__(self, max_adapters: int, max_adapter_mb: float, *, cuda_graphs: bool = True) -> None:
        self.max_adapters = max(1, max_adapters)
        self.max_adapter_bytes = int(max_adapter_mb * 2**20)
        self.cuda_graphs = cuda_graphs
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
            bank = LoraBank(model, model.get_input_embeddings().weight.dtype, self.max_adapters + 1)
            reason = unsupported_reason(model)
            if reason is None:
                decoder: Decoder = StaticDecoder(model, bank, use_graphs=self.cuda_graphs)
            else:
                log.info("%s decodes through transformers' forward: %s", name, reason)
                decoder = HfDecoder(model, bank.routing)
            template = choose_chat_template(tokenizer)[0]
            self.bases[key] = BaseModel(name, model, tokenizer, template, bank, decoder)
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
        device = next(base.model.parameters()).device
        try:
            weights = base.bank.read(folder, device)  # checked whole before a slot is touched
        except UserError:
            raise
        except Exception as error:  # a damaged file: safetensors, JSON or I/O errors
            log.warning("loading adapter %s failed", key, exc_info=True)
            lines = [line.strip() for line in str(error).splitlines() if line.strip()]
            reason = " ".join(lines[:2])[:300] or type(error).__name__
            raise UserError(
                f"could not load adapter {path} on {base.name}: {reason}",
                "check that the adapter was trained on this base model and that its folder is complete",
            ) from None
        slot = base.bank.add(weights)
        nbytes = weights.nbytes
        resident = ResidentAdapter(key, slot, tokenizer, template, nbytes)
        base.adapters[key] = resident
        log.info("loaded adapter %s into slot %d (%.3f MB)", key, slot, nbytes / 2**20)
        return resident

    def evict(self, base: BaseModel, keep: Iterable[str]) -> list[str]:
        """Drop least recently used adapters of `base` (never the folders in `keep`) until the caps hold.
        Returns the evicted folders."""
        keep = set(keep)
        evicted = []
        while self._over_caps(base):
            victim = next((a for a in base.adapters.values() if a.path not in keep), None)
            if victim is None:
                break
            base.bank.remove(victim.slot)
            del base.adapters[victim.path]
            evicted.append(victim.path)
            log.info("evicted adapter %s", victim.path)
        in_use = {id(adapter.tokenizer) for adapter in base.adapters.values()}
        base.tokenizers = {key: t for key, t in base.tokenizers.items() if id(t) in in_use}
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


# The files a saved tokenizer may consist of; equal bytes mean an equal tokenizer.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
)


def _adapter_tokenizer(folder: Path, base: BaseModel) -> Any:
    """The tokenizer saved with the adapter. Adapters of one base usually carry identical files: parsing a
    large tokenizer takes longer than loading the adapter's weights, so equal files share one instance."""
    if not (folder / "tokenizer_config.json").is_file():
        return base.tokenizer  # adapters saved by other tools may come without one
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = folder / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    key = digest.hexdigest()
    if key not in base.tokenizers:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        base.tokenizers[key] = tokenizer
    return base.tokenizers[key]
