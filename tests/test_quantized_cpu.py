"""INT8/INT4 on the CPU through torch's own kernels (``llm.quantized_cpu``): bfloat16 inputs take
``_weight_int8pack_mm`` / ``_weight_int4pack_mm_for_cpu``, checked against the layers' defining
equations in float64, and the INT4 layer's "cpu" form converts back to its buffers exactly.
Speed is measured in ``bench/cpu_quantized.py`` (docs/PERFORMANCE.md), not here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from llm import quantized_cpu
from llm.fast_decode.attention import FusedQKV, fusable_qkv
from llm.loading import load_model_and_tokenizer
from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear, quantize_model_

GROUP = 32


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm())


def int4_layer(out_features: int, in_features: int, *, seed: int = 0, bias: bool = True) -> WeightOnlyInt4Linear:
    """A bf16 INT4 layer placed on the CPU (``.to("cpu")``, as the loaders end): the "cpu" form."""
    torch.manual_seed(seed)
    linear = nn.Linear(in_features, out_features, bias=bias).to(torch.bfloat16)
    return WeightOnlyInt4Linear(linear.weight, linear.bias, group_size=GROUP).to("cpu")


def test_int8_layer_takes_the_cpu_kernel_for_bfloat16() -> None:
    """bf16 input: ``_weight_int8pack_mm`` (the kernel is really called) computes ``x @ (q * s).T + b``."""
    torch.manual_seed(1)
    layer = WeightOnlyInt8Linear(torch.randn(96, 64).to(torch.bfloat16), torch.randn(96).to(torch.bfloat16))
    x = torch.randn(3, 5, 64).to(torch.bfloat16)
    calls = []
    original = torch.ops.aten._weight_int8pack_mm

    def counted(*args: torch.Tensor) -> torch.Tensor:
        calls.append(args[0].shape)
        return original(*args)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.ops.aten, "_weight_int8pack_mm", counted)
        y = layer(x)
    want = x.double() @ (layer.weight.double() * layer.scales.double()[:, None]).T + layer.bias.double()
    assert calls == [torch.Size([15, 64])] and y.dtype == torch.bfloat16 and y.shape == (3, 5, 96)
    assert rel_err(y, want) < 1e-2
    assert not quantized_cpu.cpu_kernels_run(x.float())  # float32 keeps the dequantizing path


def test_int4_cpu_form_is_its_equation_and_converts_back_exactly() -> None:
    """Placed on the CPU in bf16 the layer holds the CPU kernel's layout; outputs are the "dequant"
    form's equation, and state_dict / .float() give back exactly the buffers it was built from."""
    torch.manual_seed(2)
    linear = nn.Linear(96, 80).to(torch.bfloat16)
    built = WeightOnlyInt4Linear(linear.weight, linear.bias, group_size=GROUP)
    assert built.kernel == "dequant"  # not packed at construction (a GPU load moves it on first)
    original = {name: t.clone() for name, t in built.state_dict().items()}
    layer = built.to("cpu")
    assert layer.kernel == "cpu" and layer.scales_and_zeros.shape == (3, 80, 2)
    x = torch.randn(4, 96).to(torch.bfloat16)
    want = x.double() @ layer.dequantized(torch.float64).T + layer.bias.double()
    assert rel_err(layer(x), want) < 1e-2
    state = layer.state_dict()
    assert all(torch.equal(state[name], original[name]) for name in original)
    layer.float()
    assert layer.kernel == "dequant" and torch.equal(layer.weight, original["weight"])


def test_unpacking_the_cpu_layout_is_exact_for_every_value() -> None:
    q = torch.arange(16, dtype=torch.uint8).repeat(48, 8)[:, :96]  # all 16 values in every row
    q = torch.roll(q, shifts=5, dims=1)
    packed = quantized_cpu.pack_int4(q)
    assert torch.equal(quantized_cpu.unpack_int4(packed, out_features=48, in_features=96, group_size=GROUP), q)


@pytest.mark.parametrize(("sizes", "fuses"), [((128, 64, 64), True), ((64, 32, 32), False)])
def test_cpu_form_q_k_v_fuse_only_at_64_row_blocks(sizes: tuple[int, int, int], fuses: bool) -> None:
    """The CPU packing works in 64-row blocks: q/k/v in the "cpu" form fuse when their row counts
    keep the blocks apart, and the fused projection equals the three; otherwise they stay apart."""
    attention = nn.Module()
    for name, rows, seed in zip(("q_proj", "k_proj", "v_proj"), sizes, range(3), strict=True):
        setattr(attention, name, int4_layer(rows, 64, seed=seed))
    assert fusable_qkv(attention) is fuses
    if not fuses:
        return
    x = torch.randn(2, 64).to(torch.bfloat16)
    separate = torch.cat([attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)], dim=-1)
    fused = FusedQKV(attention)
    assert fused.projection.kernel == "cpu" and fused.intact()
    assert torch.equal(fused.project(x), separate)


def test_cpu_default_for_quantized_models_is_bfloat16_on_the_kernels(tiny_glm_dir: Path) -> None:
    """llm.dtype auto on the CPU with int8/int4: bfloat16 and the CPU kernels (every INT4 layer in
    the "cpu" form); logits stay near the float32 dequantizing model's."""
    ids = torch.tensor([[5, 17, 42, 9, 3, 11, 8]])
    for kind in ("int8", "int4"):
        fast, _ = load_model_and_tokenizer(tiny_glm_dir, device="cpu", quantization=kind, quantization_group_size=GROUP)
        plain, _ = load_model_and_tokenizer(tiny_glm_dir, device="cpu", dtype="float32", quantization=kind,
                                            quantization_group_size=GROUP)
        assert fast.dtype == torch.bfloat16 and plain.dtype == torch.float32
        if kind == "int4":
            kinds = {m.kernel for m in fast.modules() if isinstance(m, WeightOnlyInt4Linear)}
            assert kinds == {"cpu"}
        with torch.inference_mode():
            assert rel_err(fast(input_ids=ids).logits.float(), plain(input_ids=ids).logits) < 0.05


def test_quantized_then_moved_keeps_working(tiny_glm_dir: Path) -> None:
    """``quantize_model_`` leaves the "dequant" form (no packing before a move); ``.to("cpu")`` packs."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.bfloat16).eval()
    quantize_model_(model, "int4", group_size=GROUP)
    ids = torch.tensor([[3, 9, 27, 81]])
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        assert {m.kernel for m in model.modules() if isinstance(m, WeightOnlyInt4Linear)} == {"dequant"}
        model.to("cpu")
        assert {m.kernel for m in model.modules() if isinstance(m, WeightOnlyInt4Linear)} == {"cpu"}
        assert rel_err(model(input_ids=ids).logits, before) < 0.02
