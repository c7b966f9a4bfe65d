"""Packing never leaks between rows: a packed row's logits equal those of its parts run alone."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


def test_packed_row_logits_equal_separate_rows(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.eval()
    model.config.use_cache = False  # what the trainer sets (trainer/model_loading.py)
    parts = [[1, 17, 42, 99, 23, 5], [1, 88, 7, 300, 2], [1, 64, 65, 66, 67, 68, 69, 2]]
    # The exact batch trl's padding-free collator builds for one packed row (seq_lengths from packing).
    collator = DataCollatorForLanguageModeling(pad_token_id=2, padding_free=True, pad_to_multiple_of=None)
    packed = {
        "input_ids": [token for part in parts for token in part],
        "seq_lengths": [len(p) for p in parts],
    }
    batch = collator([packed])
    assert "attention_mask" not in batch
    assert batch["position_ids"][0].tolist() == [i for part in parts for i in range(len(part))]

    with torch.no_grad():
        packed_logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        offset = 0
        for part in parts:
            alone = model(input_ids=torch.tensor([part]), use_cache=False).logits[0]
            torch.testing.assert_close(
                packed_logits[offset : offset + len(part)], alone, atol=1e-5, rtol=1e-4
            )
            offset += len(part)


def test_packed_logits_differ_when_rows_would_leak(tiny_model_dir):
    """Guards the test above: without restarting positions the second part does see the first."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.eval()
    first, second = [1, 17, 42, 99], [1, 88, 7, 300]
    with torch.no_grad():
        joined = model(input_ids=torch.tensor([first + second]), use_cache=False).logits[0, len(first) :]
        alone = model(input_ids=torch.tensor([second]), use_cache=False).logits[0]
    assert not torch.allclose(joined, alone, atol=1e-3)
