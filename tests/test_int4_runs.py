"""glmkb's "runs" INT4 layout (``llm.int4_runs``) and its Triton kernels (``llm.kernels.int4_gemv``):
the layer's "triton" form (``llm.int4_kernel: triton``).

On CPU the kernels run under Triton's interpreter (their float32 twins of the inline assembly),
checked against float64 products of the dequantized weight; the layer's form against its
"dequant" form, through ``state_dict``, moves and the fast decode path. The GPU tests (``gpu``)
run the inline assembly itself against the same references."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from llm import int4_runs
from llm.quantization import WeightOnlyInt4Linear, quantize_int4, quantize_model_
from tests.helpers import (
    assert_int4_model_on_the_fast_path_equals_generate,
    assert_interpreted_tests_pass,
    interpreted_marker,
)

interpreted = interpreted_marker()
GROUP = 32


def reference_linear(
    x: torch.Tensor, q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int
) -> torch.Tensor:
    """``x @ ((q - zero) * scale).T`` in float64."""
    n, k = q.shape
    w = (q.double().view(n, -1, group) - zero.double()[..., None]) * scale.double()[..., None]
    return x.double() @ w.view(n, k).T


def quantized(n: int, k: int, group: int, *, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, bf16 scale, bf16 zero) of a random weight, zeros outside [0, 15] included (shifted rows)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * 0.05 + torch.linspace(-0.2, 0.2, n)[:, None]
    q, scale, zero = quantize_int4(w, group_size=group)
    return q, scale.to(torch.bfloat16), zero.to(torch.bfloat16)


def test_runs_layout_round_trips_and_puts_columns_in_their_nibbles() -> None:
    """Byte ``8r + i``: column ``16r + i`` low, ``16r + 8 + i`` high; scales and zeros exactly back."""
    q = torch.arange(32).remainder(16).view(1, 32)
    packed = int4_runs.pack_runs(q)
    assert packed.shape == (1, 16) and packed[0, 0].item() == (0 | (8 << 4)) and packed[0, 9].item() == (1 | (9 << 4))
    q2 = torch.randint(0, 16, (24, 256), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert torch.equal(int4_runs.unpack_runs(int4_runs.pack_runs(q2)), q2)
    scale = (torch.rand(24, 8) * 0.01 + 1e-4).to(torch.bfloat16)
    zero = torch.randint(-119, 136, (24, 8)).to(torch.bfloat16)
    back = int4_runs.unpack_scales_zeros(int4_runs.pack_scales_zeros(scale, zero))
    assert torch.equal(back[0], scale) and torch.equal(back[1], zero)


def test_kernels_under_triton_interpreter() -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads)."""
    assert_interpreted_tests_pass(__file__, workers=2)


@interpreted
@pytest.mark.parametrize(("n", "k", "group", "block_n", "block_k"),
                         [(16, 512, 128, 4, 256), (12, 1712, 16, 8, 512), (9, 256, 64, 4, 128),
                          (8, 1024, 32, 2, 1024)])
def test_interpreted_row_kernel_equals_the_dequantized_product(n: int, k: int, group: int, block_n: int,
                                                               block_k: int) -> None:
    """One row against the runs layout, float64 reference: whole and partial tiles along N, K that
    the tile does not divide (down_proj's 13696 = 107 runs of 128), groups of 16 to 128 columns."""
    from llm.kernels.int4_gemv import launch_int4_runs_row

    q, scale, zero = quantized(n, k, group, seed=n + k)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(k))
    bias = torch.randn(n, generator=torch.Generator().manual_seed(n))
    y = launch_int4_runs_row(x, int4_runs.pack_runs(q), int4_runs.pack_scales_zeros(scale, zero), bias,
                             group_size=group, block_n=block_n, block_k=block_k)
    ref = reference_linear(x, q, scale.float(), zero.float(), group) + bias.double()
    assert ((y.double() - ref).abs().max() / ref.abs().max()).item() < 1e-4  # float32 sums of 2048 + n terms


@interpreted
@pytest.mark.parametrize(("rows", "n", "k", "group", "block_n", "block_k"),
                         [(2, 16, 512, 128, 4, 256), (3, 12, 1712, 16, 8, 512), (4, 9, 256, 64, 2, 128),
                          (4, 16, 1712, 16, 4, 512)])
def test_interpreted_rows_kernel_equals_the_dequantized_product(rows: int, n: int, k: int, group: int, block_n: int,
                                                                block_k: int) -> None:
    """2-4 rows (3 in a 4-row launch, the last masked) against float64, strided x, into a view
    of a larger output, partial tiles along N and K: K = 1712 runs three unmasked steps and a
    masked last one, with whole tiles along N (the last case) and without."""
    from llm.kernels.int4_gemv import launch_int4_runs_rows

    q, scale, zero = quantized(n, k, group, seed=rows + n)
    x = torch.randn(rows, 2 * k, generator=torch.Generator().manual_seed(k))[:, :k]  # a row stride of 2K
    bias = torch.randn(n, generator=torch.Generator().manual_seed(n))
    out = torch.full((rows + 1, n), 7.0)
    launch_int4_runs_rows(x, int4_runs.pack_runs(q), int4_runs.pack_scales_zeros(scale, zero), bias,
                          group_size=group, block_n=block_n, block_k=block_k, out=out[:rows])
    ref = reference_linear(x, q, scale.float(), zero.float(), group) + bias.double()
    assert ((out[:rows].double() - ref).abs().max() / ref.abs().max()).item() < 1e-4
    assert (out[rows] == 7.0).all()  # nothing written past the rows


@interpreted
@pytest.mark.parametrize(("split_k", "k", "group"), [(1, 160, 32), (2, 160, 32), (4, 192, 64)])
def test_interpreted_tensor_core_probe_equals_the_dequantized_product(split_k: int, k: int, group: int) -> None:
    """``bench.int4_dot_gemv`` (the tensor-core GEMV probe the GPU is to time against the row
    kernel) against float64: its ``128 + n`` operands, per-step offsets and scales, and K's steps
    shared between programs (5 over 2: 3 and 2; 6 over 4: 2, 2, 2 and none; float32 atomics)."""
    from bench.int4_dot_gemv import launch_int4_dot_gemv

    n, block_k = 32, 32
    q, scale, zero = quantized(n, k, group, seed=split_k)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(split_k))
    out = launch_int4_dot_gemv(x, int4_runs.pack_runs(q), int4_runs.pack_scales_zeros(scale, zero), group_size=group,
                               block_n=16, block_k=block_k, num_warps=1, split_k=split_k)
    ref = reference_linear(x, q, scale.float(), zero.float(), group)
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 1e-5
    with pytest.raises(ValueError, match="BLOCK_K dividing the group"):
        launch_int4_dot_gemv(x, int4_runs.pack_runs(q), int4_runs.pack_scales_zeros(scale, zero), group_size=group,
                             block_n=16, block_k=2 * group)


@interpreted
@pytest.mark.parametrize(("n", "k", "group"), [(16, 512, 128), (10, 1712, 16), (8, 256, 256)])
def test_interpreted_dequantization_is_exact(n: int, k: int, group: int) -> None:
    """``(q - z) * s`` in float32 for every column, bit for bit, partial tiles included."""
    from llm.kernels.int4_gemv import launch_int4_runs_dequant

    q, scale, zero = quantized(n, k, group, seed=k)
    ours = launch_int4_runs_dequant(int4_runs.pack_runs(q), int4_runs.pack_scales_zeros(scale, zero),
                                    group_size=group, dtype=torch.float32)
    ref = (q.float().view(n, -1, group) - zero.float()[..., None]) * scale.float()[..., None]
    assert torch.equal(ours, ref.view(n, k))


@interpreted
@pytest.mark.parametrize(("rows", "n", "k", "group", "tile"),
                         [(9, 40, 256, 64, (16, 32, 64)), (20, 64, 288, 32, (16, 32, 32)),
                          (33, 16, 512, 128, (32, 16, 128))])
def test_interpreted_gemm_equals_the_dequantized_product(rows: int, n: int, k: int, group: int,
                                                         tile: tuple[int, int, int]) -> None:
    """The INT4 GEMM (9-256 rows) against float64: partial tiles along M and N, a row stride of
    2K, into a view of a larger output, with bias; nothing written past the rows."""
    from llm.kernels.int4_gemm import launch_int4_runs_gemm

    q, scale, zero = quantized(n, k, group, seed=rows)
    x = torch.randn(rows, 2 * k, generator=torch.Generator().manual_seed(k))[:, :k]
    bias = torch.randn(n, generator=torch.Generator().manual_seed(n))
    out = torch.full((rows + 1, n), 7.0)
    block_m, block_n, block_k = tile
    launch_int4_runs_gemm(x, int4_runs.pack_runs(q), int4_runs.pack_scales_zeros(scale, zero), bias,
                          group_size=group, block_m=block_m, block_n=block_n, block_k=block_k, out=out[:rows])
    ref = reference_linear(x, q, scale.float(), zero.float(), group) + bias.double()
    assert ((out[:rows].double() - ref).abs().max() / ref.abs().max()).item() < 1e-5
    assert (out[rows] == 7.0).all()


@interpreted
@pytest.mark.parametrize(("split", "weight_first"), [(3, False), (2, True), (1, True)])
def test_interpreted_gemm_k_slices_and_weight_first_equal_the_dequantized_product(split: int,
                                                                                  weight_first: bool) -> None:
    """The K-sliced form (float32 partial sums added by ``gemv.reduce_split``, bias there) and the
    weight-as-A-operand form (session 35's tiles for 16-64 rows) against float64, with a slice
    count that does not divide the steps and partial tiles along M and N."""
    from llm.kernels.int4_gemm import launch_int4_runs_gemm

    rows, n, k, group = 20, 40, 320, 32
    q, scale, zero = quantized(n, k, group, seed=split)
    x = torch.randn(rows, k, generator=torch.Generator().manual_seed(5))
    bias = torch.randn(n, generator=torch.Generator().manual_seed(6))
    out = torch.full((rows + 1, n), 7.0)
    launch_int4_runs_gemm(x, int4_runs.pack_runs(q), int4_runs.pack_scales_zeros(scale, zero), bias,
                          group_size=group, block_m=16, block_n=32, block_k=32, split_k=split,
                          weight_first=weight_first, out=out[:rows])
    ref = reference_linear(x, q, scale.float(), zero.float(), group) + bias.double()
    assert ((out[:rows].double() - ref).abs().max() / ref.abs().max()).item() < 1e-5
    assert (out[rows] == 7.0).all()


def test_gemm_tile_fills_the_defaults() -> None:
    from llm.kernels.int4_gemv_op import GEMM_CONFIGS, SPLIT_GEMM_CONFIGS, gemm_tile

    assert gemm_tile((16, 64, 128, 4, 3)) == (16, 64, 128, 4, 3, 1, 0)
    assert gemm_tile((16, 64, 128, 4, 3, 4)) == (16, 64, 128, 4, 3, 4, 0)
    assert gemm_tile((64, 128, 64, 8, 3, 4, 1)) == (64, 128, 64, 8, 3, 4, 1)
    assert all(len(gemm_tile(c)) == 7 for c in GEMM_CONFIGS + SPLIT_GEMM_CONFIGS)


def test_gemm_refuses_steps_that_cross_a_group() -> None:
    from llm.kernels.int4_gemm import launch_int4_runs_gemm

    with pytest.raises(ValueError, match="divide the group"):
        launch_int4_runs_gemm(torch.zeros(9, 128), torch.zeros(8, 64, dtype=torch.uint8),
                              torch.zeros(8, 4, dtype=torch.int32), None, group_size=32, block_k=64)


def test_gemm_options_fit_the_row_bucket_and_the_group() -> None:
    """Each bucket times only tiles no taller than itself whose step stays in one group, and
    always dequantize + cuBLAS; labels say which rows a choice stands for."""
    from llm.kernels import int4_gemv_op as op

    assert [op.row_bucket(r) for r in (9, 16, 17, 64, 65, 256)] == [16, 16, 32, 64, 128, 256]
    for rows in (9, 40, 256):
        for group in (32, 64, 128, 256):
            options = op.gemm_options(rows, group)
            assert options[-1] == op.DEQUANTIZE and len(options) > 1
            assert all(c[0] <= op.row_bucket(rows) and group % c[2] == 0 for c in options[:-1])
    assert op._rows_label(16) == "9-16" and op._rows_label(64) == "33-64" and op._rows_label(3) == "3-4"


@interpreted
def test_interpreted_layer_triton_form_is_the_same_layer() -> None:
    """bf16 layer in the "triton" form: outputs of the dequant form for one row, decode batches
    (3 rows: one masked 4-row launch; 6: launches of 4 and 2; 15: the GEMM) and a prompt past the
    GEMM's rows (dequantized once),
    the same ``state_dict``, and ``.float()`` back to the dequant form exactly."""
    torch.manual_seed(3)
    linear = nn.Linear(128, 64).to(torch.bfloat16)
    reference = WeightOnlyInt4Linear(linear.weight.float(), linear.bias.float(), group_size=GROUP)
    layer = WeightOnlyInt4Linear(linear.weight, linear.bias, group_size=GROUP, int4_kernel="triton")
    assert layer.kernel == "triton" and reference.kernel == "dequant"
    assert layer.scales is None and layer.scales_zeros.dtype == torch.int32 and layer.scales_zeros.shape == (64, 4)
    for shape in ((1, 128), (1, 3, 128), (2, 3, 128), (3, 5, 128), (2, 130, 128)):
        x = torch.randn(shape)
        y, ref = layer(x.to(torch.bfloat16)).float(), reference(x)
        assert ((y - ref).norm() / ref.norm()).item() < 1e-2
    state = layer.state_dict()
    assert set(state) == {"weight", "scales", "zeros", "bias"}
    assert torch.equal(state["weight"], reference.weight) and torch.equal(state["zeros"].float(), reference.zeros)
    fresh = WeightOnlyInt4Linear(torch.zeros(64, 128, dtype=torch.bfloat16), linear.bias, group_size=GROUP,
                                 int4_kernel="triton")
    fresh.load_state_dict(state)
    x = torch.randn(1, 128, dtype=torch.bfloat16)
    assert fresh.kernel == "triton" and torch.equal(fresh(x), layer(x))
    layer.float()
    assert layer.kernel == "dequant" and layer.scales_zeros is None and torch.equal(layer.weight, reference.weight)


@interpreted
@pytest.mark.parametrize("batch", [1, 3, 9])
def test_interpreted_fast_path_with_triton_int4_layers_equals_generate(tiny_glm_dir: Path, batch: int) -> None:
    """bf16 tiny GLM with ``int4_kernel="triton"``: fused q/k/v concatenates ``scales_zeros`` by
    rows, the decode step runs the row kernel (1 row), the rows kernel (3) or the GEMM (9) and
    gives generate's tokens."""
    from transformers import AutoModelForCausalLM

    from llm.fast_decode import FastDecodeOptions, fast_decode_state
    from llm.streaming import run_generate

    model = AutoModelForCausalLM.from_pretrained(tiny_glm_dir, dtype=torch.bfloat16).eval()
    quantize_model_(model, "int4", group_size=GROUP, int4_kernel="triton")
    assert all(m.kernel == "triton" for m in model.modules() if isinstance(m, WeightOnlyInt4Linear))
    assert model.config.glmkb_weight_only["int4_kernel"] == "triton"
    ids = (torch.tensor([[5, 17, 42, 9, 3, 11]]) + 7 * torch.arange(batch)[:, None]) % 120 + 1
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "max_new_tokens": 4, "do_sample": False}
    eager = run_generate(model, dict(kwargs))
    fast = run_generate(model, dict(kwargs), fast_decode=FastDecodeOptions(on_cpu=True))
    assert torch.equal(eager, fast)
    fused = fast_decode_state(model).fused[0]
    assert fused.projection.kernel == "triton" and fused.tensors["scales_zeros"].shape[0] == sum(fused.sizes)
    assert fused.intact()


def test_unknown_int4_kernel_is_a_bad_input() -> None:
    from configs.errors import BadInput

    with pytest.raises(BadInput, match="auto, triton, tinygemm"):
        WeightOnlyInt4Linear(torch.zeros(8, 32), None, group_size=GROUP, int4_kernel="marlin")


def test_without_the_interpreter_the_cpu_layer_stays_in_the_dequant_form(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU without Triton's interpreter nothing runs the runs layout: the layer keeps glmkb's own."""
    monkeypatch.setattr(int4_runs, "INTERPRET", False)
    layer = WeightOnlyInt4Linear(torch.randn(8, 32, dtype=torch.bfloat16), None, group_size=GROUP, int4_kernel="triton")
    assert layer.kernel == "dequant"


@pytest.mark.parametrize("case", ["int8 row 8x2048 K=13696", "int4 runs row 4x2048 K=4096",
                                  "int4 runs row 16x4096 K=13696", "int4 runs 2 rows 4x2048 K=4096",
                                  "int4 runs 4 rows 4x2048 K=4096", "int4 runs 4 rows 4x2048 K=13696",
                                  "int4 runs GEMM 16x64x128", "int4 runs GEMM 64x128x128"])
def test_row_kernels_compile_for_sm90_without_shared_memory_or_spills_in_the_loop(case: str) -> None:
    """Guards against the layouts that sank the earlier INT4 forms (session 12's SASS): a Triton
    layout change moving x or the run sums through shared memory every step (9 barriers in the
    first row kernel, 22-77 in a 3-D rows tile), or the 4-row kernel spilling its accumulators.
    The GEMM stages its tiles in shared memory by design: for it, only no spills. The K=13696
    cases (down_proj) run a masked last step after unmasked ones: under Triton 3.6 with a runtime
    row stride that form had taken the INT8 kernel from 53 to 168 registers (run 17)."""
    pytest.importorskip("triton")
    from bench.sass import compile_for_sm90, figures, kernels

    name, fn, pointers, constexprs, warps, weights = next(c for c in kernels() if c[0] == case)
    try:
        cubin = compile_for_sm90(fn, pointers, constexprs, warps=warps)
        found = figures(cubin, weights=weights, threads=warps * 32)
    except Exception as e:  # noqa: BLE001 - e.g. a Triton without its bundled ptxas or nvdisasm
        pytest.skip(f"cannot compile for sm_90 here: {e}")
    assert found["loop_instructions"] > 100, found  # the main loop was found
    assert found["stack"] == 0, found
    if "K=13696" in case:
        assert found["registers"] <= 128, found
    if "GEMM" not in case:
        assert found["loop_shared_accesses"] == found["loop_barriers"] == 0, found


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(("n", "k"), [(4608, 4096), (4096, 13696), (27392, 4096), (200, 4096)])
def test_cuda_row_kernels_every_tile_equals_the_dequantized_product(n: int, k: int) -> None:
    """The inline assembly (nibbles under 128's and 2048's exponents, the scales' ``ld.global``,
    the 2- and 4-row blocks) against float64, for every tile the op may pick and 1-4 rows, on the
    6B shapes and a partial last tile."""
    from llm.kernels.int4_gemv import launch_int4_runs_row, launch_int4_runs_rows
    from llm.kernels.int4_gemv_op import ROW_CONFIGS, ROWS_CONFIGS

    q, scale, zero = quantized(n, k, 128, seed=n)
    packed, sz = int4_runs.pack_runs(q).cuda(), int4_runs.pack_scales_zeros(scale, zero).cuda()
    for rows, launch, configs in ((1, launch_int4_runs_row, ROW_CONFIGS), (2, launch_int4_runs_rows, ROWS_CONFIGS),
                                  (3, launch_int4_runs_rows, ROWS_CONFIGS), (4, launch_int4_runs_rows, ROWS_CONFIGS)):
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        ref = reference_linear(x.cpu().float(), q, scale.float(), zero.float(), 128)
        for block_n, block_k, warps in configs:
            y = launch(x, packed, sz, None, group_size=128, block_n=block_n, block_k=block_k, num_warps=warps)
            err = ((y.double().cpu() - ref).norm() / ref.norm()).item()
            assert err < 4e-3, (rows, block_n, block_k, warps, err)  # the bf16 output's rounding


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("rows", [9, 16, 33, 200])
def test_cuda_gemm_every_tile_equals_the_dequantized_product(rows: int) -> None:
    """Every GEMM tile the op may pick (the inline-assembly unpacking feeding the tensor cores)
    against float64, on the 6B's gate_up and down shapes, partial row tiles included."""
    from llm.kernels.int4_gemm import launch_int4_runs_gemm
    from llm.kernels.int4_gemv_op import GEMM_CONFIGS, SPLIT_GEMM_CONFIGS, gemm_options, gemm_tile

    for n, k in ((27392, 4096), (4096, 13696)):
        q, scale, zero = quantized(n, k, 128, seed=n + rows)
        packed, sz = int4_runs.pack_runs(q).cuda(), int4_runs.pack_scales_zeros(scale, zero).cuda()
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        ref = reference_linear(x.cpu().float(), q, scale.float(), zero.float(), 128)
        for config in gemm_options(rows, 128, GEMM_CONFIGS + SPLIT_GEMM_CONFIGS)[:-1]:
            block_m, block_n, block_k, warps, stages, split, weight_first = gemm_tile(config)
            y = launch_int4_runs_gemm(x, packed, sz, None, group_size=128, block_m=block_m, block_n=block_n,
                                      block_k=block_k, num_warps=warps, num_stages=stages, split_k=split,
                                      weight_first=bool(weight_first))
            err = ((y.double().cpu() - ref).norm() / ref.norm()).item()
            assert err < 4e-3, (n, k, config, err)  # bf16 weights and output


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("rows", [1, 2, 3, 8, 12, 64, 256, 300])
def test_cuda_op_equals_the_dequantized_product_for_every_row_count(rows: int) -> None:
    """The op's paths on CUDA: the tuned row kernel (1 row), the rows kernel (2-4 rows, launches
    of 4 up to 8), the GEMM or dequantize + cuBLAS, whichever was faster (9-256), and the latter
    past 256; the dequantization itself bit for bit."""
    from llm.kernels.int4_gemv import launch_int4_runs_dequant
    from llm.kernels.int4_gemv_op import int4_runs_linear

    n, k = 4608, 4096
    q, scale, zero = quantized(n, k, 128, seed=rows)
    packed, sz = int4_runs.pack_runs(q).cuda(), int4_runs.pack_scales_zeros(scale, zero).cuda()
    dq = launch_int4_runs_dequant(packed, sz, group_size=128, dtype=torch.float32).cpu()
    expected = (q.float().view(n, -1, 128) - zero.float()[..., None]) * scale.float()[..., None]
    assert torch.equal(dq, expected.view(n, k))
    x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    y = int4_runs_linear(x, packed, sz, bias, group_size=128)
    ref = reference_linear(x.cpu().float(), q, scale.float(), zero.float(), 128) + bias.cpu().double()
    assert ((y.double().cpu() - ref).norm() / ref.norm()).item() < 4e-3


@pytest.mark.gpu
@cuda
def test_cuda_int4_triton_model_on_the_fast_path_equals_generate(tiny_glm_dir: Path) -> None:
    """The "triton" form through ``ChatGLM`` on the GPU: its layers, the captured decode step with
    fused q/k/v, generate's greedy tokens (as the tinygemm test in test_quantization_int4)."""
    assert_int4_model_on_the_fast_path_equals_generate(tiny_glm_dir, int4_kernel="triton", group_size=GROUP)


def _mma_probe_emulated(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor, *, n: int, k: int,
                        group: int) -> torch.Tensor:
    """``bench.int4_mma_gemv``'s arithmetic in float64, each lane's registers read as the PTX ISA defines
    ``mma.m16n8k16``'s bf16 fragments (A: reg 0 row g cols 2c, 2c+1; reg 1 row g+8; regs 2, 3 the same at
    cols + 8. B: reg 0 k = 2c, 2c+1; reg 1 k + 8, column g. C: c0 row g, c2 row g+8)."""
    b = packed.view(n // 16, k // 64, 32, 2, 2, 4).transpose(2, 3).long()  # block, chunk, half, lane, word, byte
    s = (sz & 0xFFFF).to(torch.int16).view(torch.bfloat16).double()  # [groups, N]
    nz = (sz >> 16).to(torch.int16).view(torch.bfloat16).double()  # -(128 + z)
    out = torch.zeros(n, dtype=torch.float64)
    for block in range(n // 16):
        for chunk in range(k // 64):
            d = torch.zeros(16, dtype=torch.float64)
            grp = chunk * 64 // group
            for half in range(2):
                for word in range(2):
                    a, bm = torch.zeros(16, 16, dtype=torch.float64), torch.zeros(16, dtype=torch.float64)
                    for lane in range(32):
                        g, c = lane >> 2, lane & 3
                        w32 = sum(int(b[block, chunk, half, lane, word, i]) << (8 * i) for i in range(4))
                        fragment = ((g, 2 * c), (g + 8, 2 * c), (g, 2 * c + 8), (g + 8, 2 * c + 8))
                        for reg, (row, col) in enumerate(fragment):
                            bits = w32 >> (4 * reg)
                            for pair, shift in enumerate((0, 16)):
                                a[row, col + pair] = 128 + ((bits >> shift) & 15) + nz[grp, 16 * block + row]
                        cols = chunk * 64 + 32 * half + 8 * c + 4 * word + torch.arange(4)
                        bm[[2 * c, 2 * c + 1, 2 * c + 8, 2 * c + 9]] = x[0, cols].double()
                    d += a @ bm
            out[16 * block:16 * block + 16] += s[grp, 16 * block:16 * block + 16] * d
    return out[None]


@pytest.mark.parametrize("group", [64, 128])
def test_mma_probe_layout_puts_each_weight_in_its_fragment(group: int) -> None:
    """``bench.int4_mma_gemv``'s layout against float64: packed and unpacked back bit for bit, and its
    bytes read through ``mma.sync``'s fragment definitions (emulated) give the dequantized product: the
    layout a GPU run then times is the one the assembly needs."""
    from bench.int4_mma_gemv import pack, pack_scales_zeros, unpack

    n, k = 32, 256
    q, scale, zero = quantized(n, k, group, seed=group)
    assert torch.equal(unpack(pack(q), n=n, k=k), q)
    x = torch.randn(1, k, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    got = _mma_probe_emulated(x, pack(q), pack_scales_zeros(scale, zero), n=n, k=k, group=group)
    ref = reference_linear(x.float(), q, scale.float(), zero.float(), group)
    assert ((got - ref).abs().max() / ref.abs().max()).item() < 1e-12


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize(("n", "k", "group"), [(4608, 4096, 128), (4096, 13696, 128), (256, 448, 64)])
def test_cuda_mma_probe_every_tile_equals_the_dequantized_product(n: int, k: int, group: int) -> None:
    """``bench.int4_mma_gemv`` on the GPU: Triton's register layout is the one the assembly assumes
    (any other gives garbage, not a small error), for each of its tiles, K's chunks not a multiple of
    the warps included (448 = 7 chunks)."""
    from bench.int4_mma_gemv import TILES, launch_int4_mma_gemv, pack, pack_scales_zeros

    q, scale, zero = quantized(n, k, group, seed=n)
    packed, sz = pack(q).cuda(), pack_scales_zeros(scale, zero).cuda()
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    ref = reference_linear(x.cpu().float(), q, scale.float(), zero.float(), group)
    for chains, unroll, warps in TILES:
        if n % (16 * chains):
            continue
        y = launch_int4_mma_gemv(x, packed, sz, n=n, k=k, group_size=group, chains=chains, unroll=unroll,
                                 num_warps=warps)
        err = ((y.double().cpu() - ref).norm() / ref.norm()).item()
        assert err < 4e-3, (chains, unroll, warps, err)  # the bf16 output's rounding
