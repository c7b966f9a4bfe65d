"""Serving's own decoding on the tiny 4-bit model: both decoders and the LoRA bank give the answers that
transformers' generate and peft give, alone and in mixed batches; sampling is per row and seeded."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.serve_helpers import build_adapter, cpu_exact

PROMPTS = ("The quick brown fox", "Question: what is the capital of France? Answer:", "hello")
NEW_TOKENS = 12


@pytest.fixture(scope="module")
def served(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    from trainer.serving.models import Residency

    root = tmp_path_factory.mktemp("decoding-adapters")
    folders = [build_adapter(tiny_model_dir, root / f"a{seed}", seed=seed) for seed in (1, 2)]
    residency = Residency(max_adapters=4, max_adapter_mb=64)
    base = residency.base(str(tiny_model_dir), lambda: None)
    slots = [residency.adapter(base, str(folder), lambda: None).slot for folder in folders]
    prompts = [
        [base.tokenizer.bos_token_id, *base.tokenizer(p, add_special_tokens=False).input_ids] for p in PROMPTS
    ]
    return SimpleNamespace(base=base, folders=folders, slots=slots, prompts=prompts, model_dir=tiny_model_dir)


def greedy(decoder, prompts, slots, new_tokens=NEW_TOKENS) -> list[list[int]]:
    import torch

    with torch.inference_mode():
        session = decoder.start(prompts, slots, max(len(p) for p in prompts) + new_tokens)
        answers: list[list[int]] = [[] for _ in prompts]
        logits = session.logits
        for step in range(new_tokens):
            tokens = logits.argmax(-1)
            for answer, token in zip(answers, tokens.tolist(), strict=True):
                answer.append(token)
            if step + 1 < new_tokens:
                logits = session.step(tokens, [True] * len(prompts))
    return answers


def reference(model_dir: Path, prompt: list[int], adapter: Path | None) -> list[int]:
    """transformers' generate on a fresh 4-bit copy, through peft when an adapter is asked for."""
    import torch
    from peft import PeftModel

    from trainer.training.model_loading import load_quantized_model

    model = load_quantized_model(str(model_dir), None)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    with torch.inference_mode():
        out = model.generate(
            input_ids=torch.tensor([prompt]),
            max_new_tokens=NEW_TOKENS,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            use_cache=True,
        )
    return out[0, len(prompt) :].tolist()


@cpu_exact
def test_static_decoder_answers_as_generate_does_with_and_without_an_adapter(served):
    from trainer.serving.static_decoder import StaticDecoder

    decoder = served.base.decoder
    assert isinstance(decoder, StaticDecoder)
    prompt = served.prompts[1]
    assert greedy(decoder, [prompt], [None]) == [reference(served.model_dir, prompt, None)]
    assert greedy(decoder, [prompt], [served.slots[0]]) == [
        reference(served.model_dir, prompt, served.folders[0])
    ]
    assert greedy(decoder, [prompt], [served.slots[1]]) == [
        reference(served.model_dir, prompt, served.folders[1])
    ]


@cpu_exact
def test_a_mixed_batch_answers_each_row_as_alone_in_both_decoders(served):
    from trainer.serving.decoders import HfDecoder

    rows = [served.prompts[0], served.prompts[1], served.prompts[2], served.prompts[1]]
    slots = [served.slots[0], None, served.slots[1], served.slots[1]]
    for decoder in (served.base.decoder, HfDecoder(served.base.model, served.base.bank.routing)):
        alone = [greedy(decoder, [prompt], [slot])[0] for prompt, slot in zip(rows, slots, strict=True)]
        assert greedy(decoder, rows, slots) == alone
        assert len({tuple(answer) for answer in alone[1:]}) == 3  # base and two adapters: three answers


def test_a_mixed_batch_scores_each_row_as_alone(served):
    """Rows of different lengths and adapters prefilled together (right-padded) and stepped together give
    each row's logits alone, fed the same tokens: no padding or other row leaks in, on any device (a GPU's
    bf16 products differ with the batch shape in the last bits, so greedy answers are compared on the CPU)."""
    import torch

    decoder = served.base.decoder
    rows = [served.prompts[1], served.prompts[2], served.prompts[0], served.prompts[1]]
    slots = [served.slots[0], None, served.slots[1], served.slots[1]]
    fed = [[5, 9, 14], [7, 7, 3], [11, 2, 8], [4, 6, 10]]  # the tokens each row reads after its prompt

    def scores(prompts, row_slots, tokens):
        with torch.inference_mode():
            session = decoder.start(prompts, row_slots, max(len(p) for p in prompts) + 4)
            logits = [session.logits.clone()]
            for step in range(3):
                column = torch.tensor([row[step] for row in tokens], device=session.logits.device)
                logits.append(session.step(column, [True] * len(prompts)).clone())
        return torch.stack(logits, dim=1)  # (rows, steps, vocab)

    together = scores(rows, slots, fed)
    for index, (prompt, slot) in enumerate(zip(rows, slots, strict=True)):
        alone = scores([prompt], [slot], [fed[index]])[0]
        assert torch.allclose(together[index], alone, atol=0.02 * alone.abs().max().item(), rtol=0), index


@cpu_exact
def test_prompts_prefilled_in_several_forwards_answer_as_in_one(served, monkeypatch):
    from trainer.serving import static_decoder

    rows = [served.prompts[1], served.prompts[0], served.prompts[2]]
    slots = [served.slots[0], None, served.slots[1]]
    together = greedy(served.base.decoder, rows, slots)
    # A cap below two rows' padded length: every prompt gets its own forward.
    monkeypatch.setattr(static_decoder, "PREFILL_TOKENS", max(len(prompt) for prompt in rows))
    assert greedy(served.base.decoder, rows, slots) == together


@cpu_exact
def test_the_generic_decoder_matches_the_static_one(served):
    from trainer.serving.decoders import HfDecoder

    generic = HfDecoder(served.base.model, served.base.bank.routing)
    for slot in (None, *served.slots):
        assert greedy(generic, served.prompts, [slot] * 3) == greedy(
            served.base.decoder, served.prompts, [slot] * 3
        )


def test_both_decoders_score_the_next_token_as_transformers_and_peft_do(served):
    """Prefill and decode logits of both decoders against a peft model's forward, on any device."""
    import torch
    from peft import PeftModel

    from trainer.serving.decoders import HfDecoder
    from trainer.training.model_loading import load_quantized_model

    prompt = served.prompts[1]
    reference = PeftModel.from_pretrained(
        load_quantized_model(str(served.model_dir), None), str(served.folders[0])
    )
    device = next(reference.parameters()).device
    generic = HfDecoder(served.base.model, served.base.bank.routing)
    with torch.inference_mode():
        expected = reference(input_ids=torch.tensor([prompt], device=device)).logits[0, -2:].float()
        for decoder in (served.base.decoder, generic):
            session = decoder.start([prompt[:-1]], [served.slots[0]], len(prompt) + 1)
            first = session.logits[0].clone()
            second = session.step(torch.tensor([prompt[-1]], device=device), [True])[0]
            for got, want in ((first, expected[0]), (second, expected[1])):
                assert torch.allclose(got, want, atol=0.05 * want.abs().max().item(), rtol=0)
                assert got.argmax() == want.argmax() or want.topk(2).values.diff().abs() < 0.05


def test_a_finished_row_stays_in_the_cache_while_a_longer_one_goes_on(served):
    """A row that stopped must not advance: beside a long answer it would run past its cache."""
    import torch

    decoder = served.base.decoder
    long_prompt = served.prompts[1]
    with torch.inference_mode():
        session = decoder.start([long_prompt, served.prompts[2]], [None, None], len(long_prompt) + 3)
        arena = session.arena
        start = arena.positions.tolist()
        for _ in range(40):  # far beyond the first row's 3 tokens
            session.step(session.logits.argmax(-1), [False, True])
    assert arena.positions.tolist()[0] == start[0]
    assert arena.positions.tolist()[1] == start[1] + 40 < arena.length


@cpu_exact
def test_evicted_slots_are_reused_and_answers_stay_right(served, tmp_path):
    from trainer.serving.models import Residency

    residency = Residency(max_adapters=1, max_adapter_mb=64)
    base = residency.base(str(served.model_dir), lambda: None)
    prompt = served.prompts[0]
    first = residency.adapter(base, str(served.folders[0]), lambda: None)
    residency.evict(base, keep=[first.path])
    second = residency.adapter(base, str(served.folders[1]), lambda: None)
    assert residency.evict(base, keep=[second.path]) == [first.path]
    third = build_adapter(served.model_dir, tmp_path / "a3", seed=3)
    again = residency.adapter(base, str(third), lambda: None)
    assert residency.evict(base, keep=[again.path]) == [second.path]
    assert again.slot == first.slot  # the freed slot is taken again; nothing grows
    assert greedy(base.decoder, [prompt], [again.slot]) == [reference(served.model_dir, prompt, third)]


def test_sampled_rows_depend_on_their_own_seed_not_on_their_batch():
    import torch

    from trainer.serving.sampling import RowSampler, next_tokens

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))

    def draw(samplers, rows):
        return [next_tokens(logits[rows], samplers).tolist() for _ in range(20)]

    alone = draw([RowSampler(0.8, 0.9, 7, torch.device("cpu"))], [1])
    batch = draw(
        [
            RowSampler(0.0, 1.0, None, torch.device("cpu")),
            RowSampler(0.8, 0.9, 7, torch.device("cpu")),
            RowSampler(1.5, 1.0, 3, torch.device("cpu")),
        ],
        [0, 1, 2],
    )
    assert [row[1] for row in batch] == [row[0] for row in alone]
    assert {row[0] for row in batch} == {int(logits[0].argmax())}  # the greedy row
    assert len({row[1] for row in batch}) > 1  # sampling, not argmax


def test_top_p_keeps_only_the_most_likely_tokens():
    import torch

    from trainer.serving.sampling import RowSampler

    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    sampler = RowSampler(1.0, 0.7, 1, torch.device("cpu"))
    drawn = {int(sampler.sample(logits)) for _ in range(300)}
    assert drawn == {0, 1}  # 0.5 + 0.3 reach 0.7: tokens 2 and 3 are cut


def test_adapters_that_do_not_fit_are_refused_before_any_slot_changes(served, tmp_path):
    import json
    import shutil

    from protocol.errors import UserError

    bank = served.base.bank
    versions = bank.routing.version
    dora = tmp_path / "dora"
    shutil.copytree(served.folders[0], dora)
    config = json.loads((dora / "adapter_config.json").read_text())
    (dora / "adapter_config.json").write_text(json.dumps(config | {"use_dora": True}))
    with pytest.raises(UserError, match="DoRA"):
        bank.read(dora, bank_device(served))
    saved = tmp_path / "modules"
    shutil.copytree(served.folders[0], saved)
    (saved / "adapter_config.json").write_text(json.dumps(config | {"modules_to_save": ["lm_head"]}))
    with pytest.raises(UserError, match="whole modules"):
        bank.read(saved, bank_device(served))
    assert bank.routing.version == versions


def bank_device(served):
    return next(served.base.model.parameters()).device
