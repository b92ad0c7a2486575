"""Weight-only INT8/INT4 layers (llm.quantization) against their defining equations and the
full-precision model they replace."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from configs.errors import BadInput
from llm.quantization import (
    WeightOnlyInt4Linear,
    WeightOnlyInt8Linear,
    pack_int4,
    quantize_int4,
    quantize_int8,
    quantize_model_,
    unpack_int4,
    weight_bytes,
)


def test_int8_layer_is_its_equation() -> None:
    """y = x @ (q * s).T + b with q = round(w / s), s = max|w_row| / 127."""
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    layer = WeightOnlyInt8Linear(linear.weight, linear.bias)
    w = linear.weight.detach()
    s = w.abs().amax(dim=1) / 127
    q = torch.round(w / s[:, None]).clamp(-127, 127)
    x = torch.randn(3, 5, 64)
    torch.testing.assert_close(layer(x), x @ (q * s[:, None]).T + linear.bias, rtol=1e-5, atol=1e-5)
    assert layer.weight.dtype == torch.int8 and layer.weight.shape == (48, 64)
    assert (layer.weight.abs() <= 127).all()


def test_int4_pack_roundtrip_and_equation() -> None:
    torch.manual_seed(1)
    q = torch.randint(0, 16, (8, 64), dtype=torch.uint8)
    assert torch.equal(unpack_int4(pack_int4(q)), q)
    linear = nn.Linear(64, 8, bias=False)
    layer = WeightOnlyInt4Linear(linear.weight, None, group_size=32)
    qq, scale, zero = quantize_int4(linear.weight, group_size=32)
    w = ((qq.float().view(8, 2, 32) - zero[..., None]) * scale[..., None]).view(8, 64)
    x = torch.randn(4, 64)
    torch.testing.assert_close(layer(x), x @ w.T, rtol=1e-5, atol=1e-5)
    assert layer.weight.shape == (8, 32) and layer.weight.dtype == torch.uint8


@pytest.mark.parametrize(("kind", "bound"), [("int8", 0.01), ("int4", 0.12)])
def test_quantization_error_is_bounded(kind: str, bound: float) -> None:
    """Relative error of one layer's output on Gaussian weights: INT8 ~0.4%, INT4 (group 32) ~7%."""
    torch.manual_seed(2)
    linear = nn.Linear(256, 256, bias=False)
    if kind == "int8":
        layer: nn.Module = WeightOnlyInt8Linear(linear.weight, None)
    else:
        layer = WeightOnlyInt4Linear(linear.weight, None, group_size=32)
    x = torch.randn(16, 256)
    ref = linear(x)
    error = (layer(x) - ref).norm() / ref.norm()
    assert error < bound


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantized_tiny_glm_agrees_with_full_precision(kind: str, tiny_glm_dir: Path) -> None:
    """The tiny GLM, quantized in place: the LM head becomes INT8 in both kinds, weight bytes
    shrink, logits stay close and greedy top-1 mostly agrees (a random-weight model has near-tie
    logits, so agreement is measured, not required to be total)."""
    from transformers import AutoModelForCausalLM

    ref = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.float32).eval()
    before = weight_bytes(model)
    quantize_model_(model, kind, group_size=32)
    assert isinstance(model.lm_head, WeightOnlyInt8Linear)
    assert model.config.glmkb_weight_only == {"kind": kind, "group_size": 32 if kind == "int4" else None,
                                              "int4_kernel": "auto" if kind == "int4" else None,
                                              "lm_head": "int8"}
    linears = [m for m in model.model.modules() if isinstance(m, (WeightOnlyInt8Linear, WeightOnlyInt4Linear))]
    assert len(linears) == 2 * 6  # q, k, v, o, gate_up, down in each of the 2 layers
    assert weight_bytes(model) < before
    ids = torch.randint(0, ref.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(ids).logits, model(ids).logits
    rel = ((a - b).norm() / a.norm()).item()
    top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
    # measured (group 32): int8 0.0084 / 0.979, int4 0.084 / 0.875 (per-weight error 8%, bench.quant_error);
    # with the LM head left in full precision int8 was 0.006 / 1.0

    assert rel < (0.012 if kind == "int8" else 0.12), rel
    assert top1 > (0.95 if kind == "int8" else 0.75), top1


def test_lm_head_is_left_alone_when_asked_or_tied(tiny_glm_dir: Path) -> None:
    """``head=None`` keeps the LM head as it is; so does a head tied to the input embeddings
    (quantizing it would leave the embeddings in full precision and the two out of step)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.float32).eval()
    quantize_model_(model, "int8", head=None)
    assert isinstance(model.lm_head, nn.Linear) and model.config.glmkb_weight_only["lm_head"] is None
    assert isinstance(model.model.layers[0].mlp.down_proj, WeightOnlyInt8Linear)
    tied = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.float32).eval()
    tied.lm_head.weight = tied.get_input_embeddings().weight
    quantize_model_(tied, "int4", group_size=32)
    assert isinstance(tied.lm_head, nn.Linear) and tied.lm_head.weight is tied.get_input_embeddings().weight
    with pytest.raises(BadInput, match="LM head"):
        quantize_model_(nn.Sequential(nn.Linear(4, 4)), "int8", head="int4")


def test_bad_kind_and_group_are_one_line() -> None:
    with pytest.raises(BadInput, match="int8, int4"):
        quantize_model_(nn.Sequential(nn.Linear(4, 4)), "int2")
    with pytest.raises(BadInput, match="multiple of the group size"):
        WeightOnlyInt4Linear(torch.zeros(4, 48), None, group_size=32)


def test_int8_rows_keep_their_extremes() -> None:
    """Each row's largest magnitude maps to ±127 exactly (no clipping of outlier channels)."""
    w = torch.tensor([[0.5, -1.0, 0.25], [100.0, 1.0, -50.0]])
    q, s = quantize_int8(w)
    assert q.abs().amax(dim=1).tolist() == [127, 127]
    assert ((q.float() * s[:, None] - w).abs() <= s[:, None] / 2 + 1e-6).all()  # rounding error only
