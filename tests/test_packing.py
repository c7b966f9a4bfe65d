"""Packing never leaks between rows: a packed row's logits equal those of its parts run alone."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling


def test_packed_row_logits_equal_separate_rows(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.eval()
    model.config.use_cache = False  # what the trainer sets (trainer/training/model_loading.py)
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


def _packed_batch(parts: list[list[int]]) -> dict:
    collator = DataCollatorForLanguageModeling(pad_token_id=2, padding_free=True, pad_to_multiple_of=None)
    row = {"input_ids": [t for part in parts for t in part], "seq_lengths": [len(p) for p in parts]}
    batch = collator([row])
    return {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"], "use_cache": False}


def _logits_and_grads(model, inputs: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    logits = model(**inputs).logits
    (logits.float().square().mean()).backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_attention_equals_the_block_mask_and_its_gradients(tiny_model_dir):
    """trainer/training/packed_attention.py (what training uses) against transformers' block-diagonal mask."""
    from trainer.training.packed_attention import NAME, document_bounds, use_packed_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    inputs = _packed_batch([[1, 17, 42, 99, 23, 5], [1, 88, 7, 300, 2], [1, 64, 65, 66, 67, 68, 69, 2]])
    bounds, longest = document_bounds(inputs["position_ids"])
    assert bounds.tolist() == [0, 6, 11, 19] and longest == 8
    assert document_bounds(torch.tensor([[3, 4, 0, 1, 2]]))[0].tolist() == [0, 2, 5]
    reference, reference_grads = _logits_and_grads(model, inputs)
    assert use_packed_attention(model, row_tokens=128) is None
    assert model.config._attn_implementation == NAME
    packed, packed_grads = _logits_and_grads(model, inputs)
    torch.testing.assert_close(packed, reference, atol=1e-5, rtol=1e-4)
    assert packed_grads.keys() == reference_grads.keys() and packed_grads
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, reference_grads[name], atol=1e-6, rtol=1e-4, msg=name)


def test_packed_attention_refuses_padded_batches(tiny_model_dir):
    from trainer.training.packed_attention import use_packed_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    use_packed_attention(model, row_tokens=128)
    with pytest.raises(ValueError, match="padding-free rows"):
        model(input_ids=torch.tensor([[1, 5, 6]]), attention_mask=torch.tensor([[1, 1, 0]]), use_cache=False)


@pytest.mark.gpu
def test_varlen_flash_attention_matches_the_masked_path_on_the_gpu(tiny_model_dir):
    """On CUDA the flash varlen kernel runs; the masked SDPA path is the reference (bf16 tolerances)."""
    from trainer.training import packed_attention

    if packed_attention._varlen_attn is None:
        pytest.skip("this PyTorch has no varlen attention")
    torch.manual_seed(0)
    lengths = [7, 300, 1, 45, 200]
    bounds = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    q, k, v = (torch.randn(sum(lengths), 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    flash = packed_attention._varlen_attn(q, k, v, bounds, bounds, 300, 300, **packed_attention._CAUSAL)
    masked = packed_attention._masked_attention(q, k, v, bounds, None, 0.0)
    torch.testing.assert_close(flash, masked, atol=2e-2, rtol=2e-2)


def test_packed_attention_declines_soft_capping_and_short_sliding_windows(tiny_model_dir):
    from trainer.training.packed_attention import use_packed_attention

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    default = model.config._attn_implementation
    model.config.sliding_window = 64
    assert use_packed_attention(model, row_tokens=128) == (
        "its sliding window (64) is shorter than a packed row (128)"
    )
    model.config.sliding_window = None
    model.config.attn_logit_softcapping = 50.0
    assert use_packed_attention(model, row_tokens=128) == "its attention soft-caps logits"
    assert model.config._attn_implementation == default
