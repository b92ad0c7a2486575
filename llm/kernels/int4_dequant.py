"""tinygemm's packed INT4 weight back to a bf16 ``[N, K]`` matrix, in one pass: INT4 prompt passes.

tinygemm (``aten._weight_int4pack_mm``, ``llm.int4_tinygemm``) is a GEMV: its time grows linearly
with the rows. On the H200 (ChatGLM3-6B shape, run 19) one gate_up took 0.50 ms at 64 rows and
7.9 ms at 1024, and a 1024-token INT4 prompt pass 409 ms (bf16: 27 ms); dequantizing the layer to
bf16 and multiplying with cuBLAS costs one read of the int4 bytes and one write of the bf16 matrix,
then a GEMM at bf16 speed. This kernel does the dequantization; ``llm.quantization`` uses it past
``MAX_TINYGEMM_ROWS`` rows. It gathers one int32 word per output value (~1 TB/s on the H200, 91 us
per average layer call): a 1024-token prompt pass 409 -> 42 ms; reading each word once and writing
its 8 values would be faster.

The packed layout, as torch's ``_convert_weight_to_int4pack`` (CUDA) writes it for
``inner_k_tiles`` = T: int32 ``[N/8, K/(16T), 32, T/2]``. Word ``[nt, ko, t, j]`` holds 8 nibbles of
output row ``8 nt + t // 4``: with ``b = 8 (ko T + 2 j) + t % 4 + 4 i`` (i = 0..3) the byte of
columns ``2b`` and ``2b + 1``, column ``2b`` in bits ``4i..4i+3`` and ``2b + 1`` in bits
``16+4i..19+4i``. A nibble q means ``(q - 8) * scale + zero`` with ``scales_and_zeros[k // group, n]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 32
BLOCK_K = 128


@triton.jit
def _int4pack_dequant_kernel(
    packed_ptr, sz_ptr, out_ptr, N, K, GROUP: tl.constexpr, T: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)[:, None]
    k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]
    ok = (n < N) & (k < K)
    b = k // 2  # byte column of (k, k + 1) pairs
    ko = b // (8 * T)
    within = b % (8 * T)
    j = within // 16
    off = within % 16
    t = (n % 8) * 4 + off % 4
    word = (((n // 8) * (K // (16 * T)) + ko) * 32 + t) * (T // 2) + j
    w = tl.load(packed_ptr + word, mask=ok, other=0)
    shift = 4 * (off // 4) + 16 * (k % 2)
    q = (w >> shift) & 0xF
    sz = sz_ptr + ((k // GROUP) * N + n) * 2
    scale = tl.load(sz, mask=ok, other=0.0).to(tl.float32)
    zero = tl.load(sz + 1, mask=ok, other=0.0).to(tl.float32)
    value = (q.to(tl.float32) - 8.0) * scale + zero
    tl.store(out_ptr + n.to(tl.int64) * K + k, value.to(out_ptr.dtype.element_ty), mask=ok)


def launch_int4pack_dequant(
    packed: torch.Tensor, scales_and_zeros: torch.Tensor, *, out_features: int, in_features: int, group_size: int,
    inner_k_tiles: int, dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """The ``[out_features, in_features]`` weight that ``packed`` / ``scales_and_zeros`` stand for."""
    out = torch.empty((out_features, in_features), dtype=dtype, device=packed.device)
    grid = (triton.cdiv(out_features, BLOCK_N), triton.cdiv(in_features, BLOCK_K))
    _int4pack_dequant_kernel[grid](packed, scales_and_zeros, out, out_features, in_features, GROUP=group_size,
                                   T=inner_k_tiles, BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=4)
    return out
