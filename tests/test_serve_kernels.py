"""Serving's few-row 4-bit kernels. On the CPU: the joined weight reads bitsandbytes' bytes (the layers keep
their own outputs, the byte table decodes them), and a LoRA bank storing a group's layers side by side
answers as one storing them apart. On a GPU: the joined matmul plus each row's LoRA equals the dequantized
product, and a decode step through the kernels gives the module path's logits, for the base, one adapter
and a mixed batch."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from tests.serve_helpers import build_adapter, cpu_exact


def _linear4bit(n: int, k: int, device: str = "cuda"):
    import bitsandbytes as bnb
    import torch

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=dtype, quant_type="nf4")
    weight = bnb.nn.Params4bit(
        torch.randn(n, k) * 0.05, requires_grad=False, quant_type="nf4", compress_statistics=True
    )
    layer.weight = weight._quantize(device) if device == "cpu" else weight
    return layer.to(device)


def _decode(weight):
    """The joined weight (N, K) as the kernels read it: each byte's two table values, times the scales."""
    import torch

    pairs = weight.pairs.to(torch.int64) & 0xFFFFFFFF
    table = torch.stack([pairs >> 16, pairs & 0xFFFF], dim=1).to(torch.int16).view(torch.bfloat16).float()
    values = table[weight.codes.to(torch.int64)].reshape(weight.n, weight.k)
    return values * weight.scales.float().repeat_interleave(weight.group).view(weight.n, weight.k)


def test_joined_layers_keep_their_outputs_and_the_byte_table_decodes_them():
    import bitsandbytes.functional as bnb_functional
    import torch

    from trainer.serving import nf4_matmul

    torch.manual_seed(0)
    members = (128, 64, 64)
    layers = [_linear4bit(n, 256, "cpu") for n in members]
    x = torch.randn(3, 256)
    before = [layer(x) for layer in layers]
    assert nf4_matmul.unpackable_reason(layers) is not None  # float32 compute: the kernels take 16-bit inputs
    weight = nf4_matmul.pack_linears(layers)
    assert (weight.n, weight.k, weight.group, weight.members) == (256, 256, 64, members)
    for layer, expected in zip(layers, before, strict=True):
        assert torch.equal(layer(x), expected)  # bitsandbytes now reads views of the joined bytes
    dense = torch.cat([bnb_functional.dequantize_4bit(m.weight.data, m.weight.quant_state) for m in layers])
    # Equal up to the table's bfloat16 code values and float16 scales.
    assert (_decode(weight) - dense.float()).abs().max() <= 1e-2 * dense.abs().max()
    assert nf4_matmul.rank_offsets(members, 64, 16, torch.device("cpu")).tolist() == [0, 0, 16, 32]


@cpu_exact
def test_a_bank_joining_layers_answers_as_one_keeping_them_apart(tiny_model_dir: Path, tmp_path: Path):
    import torch

    from trainer.serving.lora import LoraBank
    from trainer.serving.static_decoder import StaticDecoder
    from trainer.training.model_loading import load_quantized_model

    adapters = [build_adapter(tiny_model_dir, tmp_path / f"a{seed}", seed=seed) for seed in (1, 2)]
    prompts = [[1, 5, 9, 12], [1, 7, 3], [1, 4, 4, 4, 4, 2]]
    answers = []
    for join in (False, True):
        model = load_quantized_model(str(tiny_model_dir), None)
        model.eval()
        bank = LoraBank(model, model.get_input_embeddings().weight.dtype, 4)
        groups = [
            [f"model.layers.{i}.{name}" for name in members]
            for i in range(2)
            for members in (
                ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                ("mlp.gate_proj", "mlp.up_proj"),
            )
        ]
        if join:
            bank.join(groups)
        slots = [bank.add(bank.read(folder, torch.device("cpu"))) for folder in adapters]
        if join:  # r=4 adapters stored at the kernels' rank, three layers side by side
            a, b = bank.stack(groups[0][1])
            slots_held = bank.capacity
            assert (
                bank.rank == 16
                and a.shape == (slots_held, 64, 48)
                and b.shape == (slots_held, 16, 64 + 32 + 32)
            )
            assert bank.stack("model.layers.0.self_attn.o_proj")[0].shape == (slots_held, 64, 16)
            with pytest.raises(RuntimeError, match="before the first adapter"):
                bank.join(groups)
        decoder = StaticDecoder(model, bank, use_graphs=False)
        with torch.inference_mode():
            session = decoder.start(prompts, [slots[0], None, slots[1]], 16)
            rows = [session.logits]
            for _ in range(4):
                rows.append(session.step(session.logits.argmax(-1), [True] * 3))
        answers.append(torch.stack(rows))
    # The joined bank pads rank 4 to 16 with zeros: the same sums, grouped differently in float32.
    torch.testing.assert_close(answers[1], answers[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(answers[1].argmax(-1), answers[0].argmax(-1))


@pytest.mark.gpu
def test_joined_matmul_with_each_rows_lora_equals_the_dequantized_product():
    import bitsandbytes.functional as bnb_functional
    import torch

    from trainer.serving import nf4_matmul

    torch.manual_seed(0)
    members, k, rank = (256, 128, 128), 512, 16
    layers = [_linear4bit(n, k) for n in members]
    x = torch.randn(4, k, dtype=torch.bfloat16, device="cuda")
    alone = [layer(x) for layer in layers]
    weight = nf4_matmul.pack_linears(layers)
    for layer, before in zip(layers, alone, strict=True):  # the layers now read the joined bytes
        assert torch.equal(layer(x), before)
    dense = torch.cat([bnb_functional.dequantize_4bit(m.weight.data, m.weight.quant_state) for m in layers])
    a = torch.randn(3, k, rank * len(members), dtype=torch.bfloat16, device="cuda") * 0.05
    b = torch.randn(3, rank, sum(members), dtype=torch.bfloat16, device="cuda") * 0.05
    a[0], b[0] = 0, 0  # the zero slot
    splits = (  # K (512) in two slices of 256, by 16- and 64-wide tiles
        nf4_matmul.KernelConfig(block_n=16, warps=2, split=2),
        nf4_matmul.KernelConfig(block_n=64, warps=4, split=2),
    )
    for rows in (1, 2, 3, 4):
        slots = torch.tensor([1, 0, 2, 1][:rows], device="cuda")
        expected = x[:rows].float() @ dense.float().T
        for config in (None, *splits):
            base = nf4_matmul.matmul(x[:rows], weight, config)
            assert _relative_error(base, expected) < 1e-2, config
            assert not weight.counters.any(), "each tile's slice counter is re-armed for the next call"
        for row in range(rows):
            start = 0
            for index, size in enumerate(members):
                shrink = x[row].float() @ a[slots[row], :, index * rank : (index + 1) * rank].float()
                expected[row, start : start + size] += shrink @ b[slots[row], :, start : start + size].float()
                start += size
        lora = nf4_matmul.GroupLora(a, b, rank, slots)
        product = partial(nf4_matmul.matmul, x[:rows], weight)
        beside = nf4_matmul.with_lora_beside(product, x[:rows], lora, members)
        assert _relative_error(beside, expected) < 1e-2
        by_bitsandbytes = torch.cat([layer(x[:rows]) for layer in layers], dim=-1)
        by_bitsandbytes += nf4_matmul.lora_product(x[:rows], lora, members)
        assert _relative_error(by_bitsandbytes, expected) < 1e-2


@pytest.mark.gpu
def test_decode_steps_through_the_kernels_give_the_module_paths_logits(tmp_path: Path):
    import torch

    from trainer.serving.models import Residency

    model_dir = _small_llama_with_adapters(tmp_path)
    residency = Residency(max_adapters=4, max_adapter_mb=64)
    base = residency.base(str(model_dir), lambda: None)
    decoder = base.decoder
    assert decoder.kernels is not None, "a 256-wide Llama in 4-bit on a GPU runs through the kernels"
    for group in decoder.kernels.layers[-1]:  # timed at load for every arena size, with and without LoRA
        assert set(group.choices) == {(rows, lora) for rows in (1, 2, 4) for lora in (False, True)}
    slots = [residency.adapter(base, str(model_dir / name), lambda: None).slot for name in ("a1", "a2")]
    prompts = [[1, 5, 9, 12], [1, 7, 3], [1, 4], [1, 8, 8, 8, 2]]
    with torch.inference_mode():
        for row_slots in ([None], [slots[0]], [slots[0], None, slots[1], slots[1]]):
            session = decoder.start(prompts[: len(row_slots)], row_slots, 32)
            session.arena.tokens[: len(row_slots)].copy_(session.logits.argmax(-1))
            kernels, decoder.kernels = decoder.kernels, None
            expected = decoder._routed_step(session.arena, session.route).float()
            decoder.kernels = kernels
            eager = decoder._routed_step(session.arena, session.route).float()
            replayed = decoder.decode(session.arena, session.route).float()  # the captured graph
            assert _relative_error(eager, expected) < 2e-2, row_slots
            assert torch.equal(replayed, eager), row_slots


def _relative_error(actual, expected) -> float:
    return ((actual.float() - expected.float()).abs().max() / expected.float().abs().max()).item()


def _small_llama_with_adapters(root: Path) -> Path:
    """A 2-layer Llama 256 wide (the kernels need inputs in multiples of 256) and two random adapters."""
    from tests.tiny_model import build_tiny_llama

    model_dir = build_tiny_llama(root / "small", width=256)
    for seed in (1, 2):
        build_adapter(model_dir, model_dir / f"a{seed}", seed=seed)
    return model_dir


def test_every_kernel_variant_compiles_for_a_gpu_without_one():
    """Triton's real front end and ptxas, for an sm_90 target: catches what its CPU interpreter accepts but
    the compiler refuses (a GPU run is scarce). Skipped where Triton is not installed (CI)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from trainer.serving import nf4_kernels, nf4_matmul

    pointers = {
        "x_ptr": "*bf16",
        "w_ptr": "*i32",
        "scale_ptr": "*fp16",
        "pair_ptr": "*i32",
        "out_ptr": "*bf16",
    }
    pointers |= {"partial_ptr": "*fp32", "b_ptr": "*bf16", "slot_ptr": "*i64", "rank_offset_ptr": "*i32"}
    pointers |= {"a_ptr": "*bf16", "count_ptr": "*i32"}

    def compile_kernel(kernel, constants: dict, warps: int = 4) -> None:
        names = kernel.arg_names
        signature = {name: "constexpr" if name in constants else pointers.get(name, "i32") for name in names}
        source = ASTSource(
            fn=kernel,
            signature=signature,
            constexprs={(names.index(name),): value for name, value in constants.items()},
        )
        triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})

    assert nf4_kernels.STEP.value == nf4_matmul.STEP
    for rows in (1, 2, 3, 4):
        for block_n, warps, split in [(16, 2, 1), (64, 4, 4)]:
            constants = dict(ROWS=rows, GROUP=64, BLOCK_N=block_n, SPLIT=split)
            compile_kernel(nf4_kernels.nf4_matmul_kernel, constants, warps)
    compile_kernel(nf4_kernels.lora_shrink_kernel, dict(RT=48, RT_PAD=64, BLOCK_K=256))
    compile_kernel(nf4_kernels.lora_expand_kernel, dict(R=16, BLOCK_N=64))
