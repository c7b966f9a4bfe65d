"""Builds a tiny random Llama and a byte-level BPE tokenizer on disk, so tests never download weights."""

from __future__ import annotations

from pathlib import Path

from trainer.demo_model import save_random_llama

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "QLoRA fine-tunes a 4-bit quantized model with low-rank adapters.",
    "Question: what is the capital of France? Answer: Paris.",
    "user assistant system hello world tokens training loss step epoch",
    "0123456789 abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "[INST] Tell me a joke. [/INST] Why did the chicken cross the road?",
]


def build_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A byte-level BPE tokenizer (no unknown tokens) with Llama-like special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )
    fast.chat_template = chat_template
    return fast


def build_tiny_llama(
    directory: Path, *, chat_template: str | None = CHAT_TEMPLATE, seed: int = 0, width: int = 64
) -> Path:
    """Save a 2-layer random Llama (64 wide unless told) and its tokenizer as safetensors in `directory`."""
    return save_random_llama(directory, build_tokenizer(chat_template), width=width, seed=seed)
