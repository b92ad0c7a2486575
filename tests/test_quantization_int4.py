"""INT4 weight-only layers (``llm.quantization.WeightOnlyInt4Linear``) and their tinygemm form
(``llm.int4_tinygemm``): the conversion checked against torch's CPU twin of the CUDA kernel, the
layer's tinygemm form exercised on CPU through that twin (fused q/k/v, state_dict, moves), the
zero-point regression, and on a GPU (``gpu``) the real kernel under torch.compile + CUDA graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from llm import int4_tinygemm as tinygemm
from llm.quantization import WeightOnlyInt4Linear, quantize_int4, quantize_model_, unpack_int4

GROUP = 32


def dequantized(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    n, k = q.shape
    return ((q.float().view(n, -1, group) - zero[..., None]) * scale[..., None]).view(n, k)


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 5e-3)])
def test_tinygemm_conversion_equals_dequantized_linear(dtype: torch.dtype, tol: float) -> None:
    """glmkb's (q, scale, zero) -> tinygemm's scales_and_zeros, run by torch's CPU twin of the
    kernel (same convention ``(q - 8) * scale + zero``), gives the dequantized F.linear."""
    torch.manual_seed(0)
    w = torch.randn(48, 256) * 0.02
    q, scale, zero = quantize_int4(w, group_size=GROUP)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32), 2)
    sz = tinygemm.scales_and_zeros(scale, zero, dtype=dtype)
    assert sz.shape == (256 // GROUP, 48, 2)
    x = torch.randn(5, 256)
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(dtype), packed, GROUP, sz).float()
    ref = x @ dequantized(q, scale, zero, GROUP).T
    assert ((y - ref).norm() / ref.norm()).item() < tol


def test_scales_and_zeros_round_trip_exactly_in_bf16() -> None:
    """Integer zero points come back exactly from tinygemm's bf16 ``(8 - z) * s``, also far outside [0, 15]."""
    torch.manual_seed(1)
    scale = (torch.rand(16, 8) * 0.01 + 1e-4).to(torch.bfloat16).float()
    zero = torch.randint(-119, 136, (16, 8)).float()  # |8 - z| < 128
    back_scale, back_zero = tinygemm.split_scales_and_zeros(tinygemm.scales_and_zeros(scale, zero, dtype=torch.bfloat16))
    assert torch.equal(back_scale, scale) and torch.equal(back_zero, zero)


def test_high_nibble_first_is_tinygemms_byte_order() -> None:
    """torch's tests pack ``q[:, ::2] << 4 | q[:, 1::2]``: the even column in the high nibble."""
    q = torch.tensor([[1, 2, 3, 4]])
    assert tinygemm.high_nibble_first(q).tolist() == [[0x12, 0x34]]


def test_groups_that_do_not_straddle_zero_keep_their_levels() -> None:
    """Regression: the zero point was clamped to [0, 15], so an all-positive (or all-negative)
    group was clipped to one end of its range (error ~ the values themselves, not a step)."""
    torch.manual_seed(2)
    w = torch.cat([1.0 + 0.1 * torch.rand(4, GROUP), -2.0 - 0.1 * torch.rand(4, GROUP), 0.02 * torch.randn(4, GROUP)])
    q, scale, zero = quantize_int4(w, group_size=GROUP)
    error = (dequantized(q, scale, zero, GROUP) - w).abs()
    assert (error <= scale.repeat_interleave(GROUP, dim=1) * 1.0001).all()  # <= one step (half a step + zero rounding)
    layer = WeightOnlyInt4Linear(w, None, group_size=GROUP)
    assert ((layer.dequantized(torch.float32) - w).norm() / w.norm()).item() < 0.01


def reference_int4pack_mm(x: torch.Tensor, packed: torch.Tensor, group: int, sz: torch.Tensor) -> torch.Tensor:
    """tinygemm's equation over a row-major ``high_nibble_first`` weight: ``w = (q - 8) * s + z``."""
    q = torch.stack((packed >> 4, packed & 0x0F), dim=-1).flatten(-2).float()
    n, k = q.shape
    s, z = sz[..., 0].float().T, sz[..., 1].float().T  # [N, K/group]
    w = ((q.view(n, -1, group) - 8) * s[..., None] + z[..., None]).view(n, k)
    return (x.float() @ w.T).to(x.dtype)


@pytest.fixture
def cpu_tinygemm(monkeypatch: pytest.MonkeyPatch) -> None:
    """The layer's tinygemm form on CPU, through a reference of the kernel's equation over
    row-major bytes (torch's CPU twin packs rows in blocks of 64, so q/k/v's rows would not
    concatenate as they do in the CUDA layout's 8-row tiles, checked on the GPU below)."""
    monkeypatch.setattr(tinygemm, "tinygemm_available", lambda device: device.type == "cpu")
    monkeypatch.setattr(tinygemm, "pack_weight", lambda q, *, inner_tiles: tinygemm.high_nibble_first(q))
    monkeypatch.setattr(tinygemm, "int4pack_mm", reference_int4pack_mm)


def test_layer_tinygemm_form_is_the_same_layer(cpu_tinygemm: None) -> None:
    """bf16 layer on a tinygemm device: same outputs as the dequant form, the same bytes, and
    ``state_dict`` / ``.float()`` give back exactly the dequant form's buffers."""
    torch.manual_seed(3)
    linear = nn.Linear(128, 64).to(torch.bfloat16)
    reference = WeightOnlyInt4Linear(linear.weight.float(), linear.bias.float(), group_size=GROUP)  # float32: dequant
    layer = WeightOnlyInt4Linear(linear.weight, linear.bias, group_size=GROUP)
    assert layer.kernel == "tinygemm" and reference.kernel == "dequant"
    assert layer.scales is None and layer.zeros is None and layer.scales_and_zeros.shape == (4, 64, 2)
    x = torch.randn(2, 3, 128)
    y, ref = layer(x.to(torch.bfloat16)).float(), reference(x)
    assert ((y - ref).norm() / ref.norm()).item() < 1e-2
    state = layer.state_dict()
    assert set(state) == {"weight", "scales", "zeros", "bias"}
    assert torch.equal(state["weight"], reference.weight)
    torch.testing.assert_close(state["zeros"].float(), reference.zeros, rtol=0, atol=0)
    torch.testing.assert_close(state["scales"].float(), reference.scales, rtol=1e-2, atol=0)
    fresh = WeightOnlyInt4Linear(torch.zeros(64, 128, dtype=torch.bfloat16), None, group_size=GROUP)
    fresh.register_buffer("bias", torch.zeros(64, dtype=torch.bfloat16))
    fresh.load_state_dict(state)
    assert fresh.kernel == "tinygemm" and torch.equal(fresh(x.to(torch.bfloat16)), layer(x.to(torch.bfloat16)))
    layer.float()
    assert layer.kernel == "dequant" and layer.scales_and_zeros is None
    assert torch.equal(layer.weight, state["weight"]) and torch.equal(layer.zeros, state["zeros"].float())


def test_fast_path_with_tinygemm_layers_equals_generate(cpu_tinygemm: None, tiny_glm_dir: Path) -> None:
    """bf16 tiny GLM in tinygemm form: fused q/k/v concatenates scales_and_zeros along its N axis
    (axis 1), and the decode step gives generate's tokens."""
    from transformers import AutoModelForCausalLM

    from llm.fast_decode import FUSED_QKV, FastDecodeOptions, fast_decode_state
    from llm.streaming import run_generate

    model = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.bfloat16).eval()
    quantize_model_(model, "int4", group_size=GROUP)
    assert all(m.kernel == "tinygemm" for m in model.modules() if isinstance(m, WeightOnlyInt4Linear))
    on_cpu = FastDecodeOptions(on_cpu=True)
    ids = torch.tensor([[5, 17, 42, 9, 3, 11]])
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": 12, "do_sample": False}
    eager = run_generate(model, dict(kwargs))
    fast = run_generate(model, dict(kwargs), fast_decode=on_cpu)
    assert torch.equal(eager, fast)
    state = fast_decode_state(model)
    assert state.fused and FUSED_QKV not in state.off
    fused = state.fused[0]
    assert fused.projection.kernel == "tinygemm" and fused.tensors["scales_and_zeros"].shape[1] == sum(fused.sizes)
    assert fused.intact()


def test_per_layer_error_is_a_rounding_error_not_a_bug() -> None:
    """Group-128 asymmetric INT4 on N(0, 0.02) weights: 10 % relative weight error (a 1/15 step
    of a ~5.2-sigma range, uniform rounding: 5.2 / 15 / sqrt(12) = 0.10 sigma); group 32 8 %."""
    torch.manual_seed(4)
    w = torch.randn(256, 1024) * 0.02
    for group, (low, high) in {128: (0.09, 0.11), 32: (0.07, 0.09)}.items():
        q, scale, zero = quantize_int4(w, group_size=group)
        rel = ((dequantized(q, scale, zero, group) - w).norm() / w.norm()).item()
        assert low < rel < high, (group, rel)
    layer = WeightOnlyInt4Linear(w, None, group_size=128)
    assert torch.equal(unpack_int4(layer.weight), quantize_int4(w, group_size=128)[0])


@pytest.mark.gpu
def test_tinygemm_on_cuda_under_compile_and_cuda_graph() -> None:
    """The real kernel: the layer asked for tinygemm switches to it on a bf16 GPU, matches the dequant form,
    runs compiled (dynamic=False) inside a captured CUDA graph, and moves back to CPU exactly."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a CUDA GPU of sm80+")
    torch.manual_seed(5)
    q = torch.randint(0, 16, (96, 256), dtype=torch.uint8, device="cuda")
    parts = [tinygemm.pack_weight(q[a:b], inner_tiles=8) for a, b in ((0, 64), (64, 72), (72, 96))]
    assert torch.equal(torch.cat(parts), tinygemm.pack_weight(q, inner_tiles=8))  # rows concatenate: fused q/k/v
    assert torch.equal(tinygemm.unpack_weight(torch.cat(parts), out_features=96, in_features=256, group_size=128), q)
    w, b = torch.randn(4096 + 512, 4096) * 0.02, torch.randn(4096 + 512) * 0.01
    cpu_layer = WeightOnlyInt4Linear(w.to(torch.bfloat16), b.to(torch.bfloat16), group_size=128,
                                     int4_kernel="tinygemm")  # "auto" takes the Triton kernels on sm90+
    canonical = {k: v.clone() for k, v in cpu_layer.state_dict().items()}
    layer = cpu_layer.to("cuda")
    assert layer.kernel == "tinygemm" and layer.weight.dtype == torch.int32
    x = torch.randn(1, 1, 4096, device="cuda", dtype=torch.bfloat16)
    ref = torch.nn.functional.linear(x.float(), layer.dequantized(torch.float32), layer.bias.float())
    assert ((layer(x).float() - ref).norm() / ref.norm()).item() < 1e-2
    compiled = torch.compile(layer, dynamic=False)
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            compiled(static_x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_y = compiled(static_x)
    static_x.copy_(torch.randn_like(x))
    graph.replay()
    torch.testing.assert_close(static_y, layer(static_x))
    back = layer.cpu()
    assert back.kernel == "cpu"  # bf16 on the CPU: torch's CPU kernel (llm.quantized_cpu), converted exactly
    for name, tensor in back.state_dict().items():
        assert torch.equal(tensor, canonical[name]), name


@pytest.mark.gpu
def test_bf16_int4_model_takes_tinygemm_on_the_fast_path(tiny_glm_dir: Path) -> None:
    """A bf16 INT4 model on the GPU: every layer on tinygemm, the captured decode step with fused
    q/k/v on, and its greedy tokens those of plain generate."""
    if not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("needs a CUDA GPU of sm80+")
    from tests.helpers import assert_int4_model_on_the_fast_path_equals_generate

    assert_int4_model_on_the_fast_path_equals_generate(tiny_glm_dir, int4_kernel="tinygemm", group_size=GROUP)


def test_decode_compile_tunes_only_models_that_dequantize(cpu_tinygemm: None) -> None:
    """Coordinate-descent tuning (fusing dequantization into a one-row matmul) is for layers that
    dequantize; a model whose INT4 layers all run tinygemm keeps bf16's measured default."""
    from types import SimpleNamespace

    from llm.fast_decode.decode_graph import compile_options

    def model(dtype: torch.dtype) -> nn.Module:
        m = nn.Sequential(nn.Linear(64, 64), nn.Linear(64, 8)).to(dtype)
        m.config = SimpleNamespace()
        return quantize_model_(m, "int4", group_size=GROUP, skip=("1",))

    assert compile_options(model(torch.float32)) == {"coordinate_descent_tuning": True}
    assert compile_options(model(torch.bfloat16)) is None
