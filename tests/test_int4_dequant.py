"""INT4 prompt passes: tinygemm's packed weight dequantized by one kernel (``llm.kernels.int4_dequant``).

Regression: tinygemm's time grows linearly with the rows, so an INT4 prompt pass of 1024 tokens
took 409 ms on the H200 against 27 ms in bf16 (run 19). Past 48 rows the layer now dequantizes
its packed weight and runs one GEMM. On CPU the kernel runs under Triton's interpreter against a
packing written from torch's ``_convert_weight_to_int4pack`` source (the op itself is CUDA-only);
the GPU tests check it against the op's own packing and against tinygemm's products.
"""

from __future__ import annotations

from importlib.util import find_spec

import pytest
import torch

from tests.helpers import INTERPRETED, assert_interpreted_tests_pass, count_calls, interpreted_marker

interpreted = interpreted_marker()


def pack_like_tinygemm(q: torch.Tensor, inner_k_tiles: int) -> torch.Tensor:
    """q ``[N, K]`` (0..15) in the layout torch's CUDA ``_convert_weight_to_int4pack`` writes (its
    ``matrix_to_m16n8k16_Bint4_layout``): int32 ``[N/8, K/(16T), 32, T/2]``, word ``[nt, ko, t, j]``
    holding row ``8 nt + t // 4``, bytes ``b = 8 (ko T + 2 j) + t % 4 + 4 i``: column ``2b`` in bits
    ``4i``, ``2b + 1`` in bits ``16 + 4i``."""
    n_rows, k_cols = q.shape
    t_ = inner_k_tiles
    nt, ko, t, j = torch.meshgrid(torch.arange(n_rows // 8), torch.arange(k_cols // (16 * t_)), torch.arange(32),
                                  torch.arange(t_ // 2), indexing="ij")
    row = 8 * nt + t // 4
    word = torch.zeros(nt.shape, dtype=torch.int64)
    for i in range(4):
        b = 8 * (ko * t_ + 2 * j) + t % 4 + 4 * i
        word |= q[row, 2 * b].long() << (4 * i)
        word |= q[row, 2 * b + 1].long() << (16 + 4 * i)
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32)


def test_kernels_under_triton_interpreter() -> None:
    """Runs this file's ``test_interpreted_*`` with ``TRITON_INTERPRET=1`` (set before Triton loads)."""
    assert_interpreted_tests_pass(__file__)


@interpreted
@pytest.mark.parametrize(("n", "k", "group", "tiles"), [(16, 256, 32, 8), (24, 128, 64, 4), (8, 96, 32, 2), (8, 384, 128, 8), (16, 512, 256, 8)])
def test_interpreted_dequantizes_the_packed_layout(n: int, k: int, group: int, tiles: int) -> None:
    """Every nibble lands at its (row, column) and becomes ``(q - 8) * scale + zero`` of its group,
    for each inner k-tile count tinygemm uses (8, 4, 2), groups of 32 to 256 columns (several per
    k-tile, one, several k-tiles per group) and an odd count of k-tiles (down_proj's 107)."""
    from llm.kernels.int4_dequant import launch_int4pack_dequant

    g = torch.Generator().manual_seed(n + k)
    q = torch.randint(0, 16, (n, k), generator=g)
    sz = torch.stack((torch.rand(k // group, n, generator=g) / 8, torch.randn(k // group, n, generator=g) / 8), -1)
    ours = launch_int4pack_dequant(pack_like_tinygemm(q, tiles), sz, out_features=n, in_features=k, group_size=group,
                                   inner_k_tiles=tiles, dtype=torch.float32)
    scale = sz[..., 0].t().repeat_interleave(group, dim=1)
    zero = sz[..., 1].t().repeat_interleave(group, dim=1)
    assert torch.allclose(ours, (q.float() - 8) * scale + zero, rtol=1e-6, atol=1e-7)


def gpu_layer(rows_k: int = 4096, out_features: int = 512) -> tuple:
    from llm.quantization import WeightOnlyInt4Linear

    if not torch.cuda.is_available() or find_spec("triton") is None:
        pytest.skip("needs a CUDA GPU and Triton")
    g = torch.Generator().manual_seed(0)
    weight = (torch.randn(out_features, rows_k, generator=g) * 0.02).to(torch.bfloat16)
    layer = WeightOnlyInt4Linear(weight, torch.randn(out_features, generator=g).to(torch.bfloat16), group_size=128,
                                 int4_kernel="tinygemm")
    layer = layer.cuda()
    if layer.kernel != "tinygemm":
        pytest.skip("tinygemm does not run here")
    return layer, g


@pytest.mark.gpu
def test_the_kernel_reads_torchs_own_packing() -> None:
    """Against the op's own layout: the dequantized weight is what tinygemm multiplies by (its
    product with identity rows), to bf16 rounding, for the fused q/k/v's column-sliced scales too."""
    from llm.kernels.int4_dequant_op import int4pack_dequantized

    layer, _ = gpu_layer()
    ours = int4pack_dequantized(layer.weight, layer.scales_and_zeros, out_features=layer.out_features,
                                in_features=layer.in_features, group_size=layer.group_size)
    eye = torch.eye(layer.in_features, dtype=torch.bfloat16, device="cuda")
    theirs = layer._tinygemm(eye).t()  # [N, K]: tinygemm's own dequantized values
    assert ours is not None and ours.shape == theirs.shape
    assert (ours.float() - theirs.float()).abs().max().item() <= 2**-8 * theirs.float().abs().max().item()


@pytest.mark.gpu
def test_a_prompt_dequantizes_and_a_decode_batch_stays_on_tinygemm(monkeypatch: pytest.MonkeyPatch) -> None:
    """64 rows: one dequantization and a GEMM, the product tinygemm gives to bf16 rounding of the
    sums; 16 rows (a decode batch): tinygemm, no dequantization."""
    import llm.kernels.int4_dequant as kernel_module

    layer, g = gpu_layer()
    launches = count_calls(monkeypatch, kernel_module, "launch_int4pack_dequant")
    x = torch.randn(64, layer.in_features, generator=g).to("cuda", torch.bfloat16)
    ours = layer(x)
    theirs = layer._tinygemm(x) + layer.bias
    assert len(launches) == 1
    assert ((ours.float() - theirs.float()).norm() / theirs.float().norm()).item() < 1e-2
    layer(x[:16])
    assert len(launches) == 1
