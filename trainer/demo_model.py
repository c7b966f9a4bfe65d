"""Build `qlora-bot demo`'s tiny random Llama, its tokenizer and its chat dataset in a folder, locally.

    python -m trainer.demo_model DIR    # writes DIR/model (safetensors + tokenizer) and DIR/chats.jsonl

Nothing is downloaded: the tokenizer is a byte-level BPE trained here on the dataset's own text, the
model a seeded random Llama small enough to fine-tune on a 2-core CPU in a minute. It runs in its own
process because it imports torch and transformers, which the bot process never does.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

# A seeded random 2-layer Llama: large enough that its LoRA visibly learns the answers' pattern, small
# enough to train quickly on a CPU.
WIDTH = 64
LAYERS = 2
VOCAB = 512
SEED = 0

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]

CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Portugal": "Lisbon",
    "Japan": "Tokyo",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Chile": "Santiago",
    "Norway": "Oslo",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Poland": "Warsaw",
    "Austria": "Vienna",
    "Greece": "Athens",
    "Ireland": "Dublin",
    "Cuba": "Havana",
    "India": "New Delhi",
    "China": "Beijing",
    "Russia": "Moscow",
    "Turkey": "Ankara",
    "Australia": "Canberra",
}
# Asked two ways, answered one way: the pattern the adapter learns.
QUESTIONS = ("What is the capital of {country}?", "Which city is the capital of {country}?")
ANSWER = "The capital of {country} is {city}."
TRY_PROMPT = QUESTIONS[0].format(country="France")


def demo_rows() -> list[dict]:
    """The demo dataset: chat rows in the `messages` format, one question and its answer each."""
    return [
        {
            "messages": [
                {"role": "user", "content": question.format(country=country)},
                {"role": "assistant", "content": ANSWER.format(country=country, city=city)},
            ]
        }
        for question in QUESTIONS
        for country, city in CAPITALS.items()
    ]


def build_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer (no unknown tokens) trained on `corpus`, with the demo chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(directory: Path, corpus: list[str]) -> Path:
    """Save the random Llama (safetensors) and its tokenizer in `directory`."""
    return save_random_llama(directory, build_tokenizer(corpus))


def save_random_llama(directory: Path, tokenizer, *, width: int = WIDTH, seed: int = SEED) -> Path:
    """A seeded random Llama of LAYERS layers, `width` wide, for `tokenizer`'s vocabulary, saved with it as
    safetensors (the tests' tiny model is built here too)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def build_demo(folder: Path) -> tuple[Path, Path]:
    """DIR/model and DIR/chats.jsonl; the same files every time (seeded), so a rebuild changes nothing."""
    rows = demo_rows()
    corpus = [message["content"] for row in rows for message in row["messages"]] + ["user", "assistant"]
    model = build_model(folder / "model", corpus * 4)
    dataset = folder / "chats.jsonl"
    dataset.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return model, dataset


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m trainer.demo_model DIR", file=sys.stderr)
        return 2
    model, dataset = build_demo(Path(argv[0]))
    print(json.dumps({"model": str(model), "dataset": str(dataset), "try": TRY_PROMPT}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
