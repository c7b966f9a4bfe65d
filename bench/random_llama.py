"""A random-init Llama saved as safetensors with a word-level tokenizer (one word, one token), for the
benchmarks: nothing is downloaded, and token counts are exact."""

from __future__ import annotations

from pathlib import Path

LLAMA2_7B = {
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
}
TINY = {  # the plumbing on a CPU in seconds; its figures mean nothing
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "vocab_size": 1000,
    "max_position_embeddings": 4096,
}
SHAPES = {"7b": LLAMA2_7B, "tiny": TINY}
FIRST_WORD = 3  # ids 0-2 are <unk>, <s>, </s>; words are w3, w4, ...


def word(token_id: int) -> str:
    return f"w{token_id}"


def build_random_llama(directory: Path, shape: dict[str, int]) -> Path:
    """Save the model and its tokenizer under `directory` once; later calls reuse them."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if (directory / "config.json").exists() and (directory / "tokenizer.json").exists():
        return directory
    config = LlamaConfig(**shape, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):
        model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(directory, safe_serialization=True)
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {word(i): i for i in range(FIRST_WORD, config.vocab_size)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="</s>"
    )
    tokenizer.save_pretrained(directory)
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    return directory
