"""tinygemm's packed INT4 weight back to a bf16 ``[N, K]`` matrix, in one pass: INT4 prompt passes.

tinygemm (``aten._weight_int4pack_mm``, ``llm.int4_tinygemm``) is a GEMV: its time grows linearly
with the rows. On the H200 (ChatGLM3-6B shape, run 19) one gate_up took 0.50 ms at 64 rows and
7.9 ms at 1024, and a 1024-token INT4 prompt pass 409 ms (bf16: 27 ms); dequantizing the layer to
bf16 and multiplying with cuBLAS costs one read of the int4 bytes and one write of the bf16 matrix,
then a GEMM at bf16 speed. This kernel does the dequantization; ``llm.quantization`` uses it past
``MAX_TINYGEMM_ROWS`` rows. Run 19's first form gathered one int32 word per output value, with
a scale and a zero load per value (~1 TB/s on the H200, 91 us per average layer call, 15.3 of a
25.3 ms 128-token prompt pass): a 1024-token prompt pass 409 -> 42 ms. This form reads each word
once (8-byte loads), puts its nibbles in column order with one permute of int8 values through
shared memory, loads one scale and zero per run of 32 columns and writes 16-byte stores. Compiled
offline for sm_90 (Triton 3.6) it issues 11.5 instructions per value against 17.75 (run 19's form,
whose loads were 2-byte and predicated) and 31 registers against 111, so it should run at copy
bandwidth (~14 GB per 6B prompt pass, ~4 ms); **not yet measured on a GPU** (``bench/prefill.py``).

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


@triton.jit
def _int4pack_dequant_kernel(packed_ptr, sz_ptr, out_ptr, N, K, KO, GROUP: tl.constexpr, T: tl.constexpr,
                             KOB: tl.constexpr):
    """Rows ``8 nt .. 8 nt + 7`` (``nt`` = program 0) x the ``KOB`` k-tiles of program 1: each word
    read once, its nibbles put in column order by one permute (as int8), then scaled and written
    row by row, contiguously."""
    nt = tl.program_id(0)
    ko = tl.program_id(1) * KOB + tl.arange(0, KOB)[:, None, None, None]  # [KOB, 1, 1, 1]
    r = tl.arange(0, 8)[None, :, None, None]  # row within the n-tile: lanes t = 4 r + l
    lane = tl.arange(0, 4)[None, None, :, None]
    j = tl.arange(0, T // 2)[None, None, None, :]
    words = tl.load(packed_ptr + ((nt * KO + ko) * 32 + 4 * r + lane) * (T // 2) + j)
    i = tl.arange(0, 4)[:, None]
    half = tl.arange(0, 2)[None, :]
    q = ((words[:, :, :, :, None, None] >> (4 * i + 16 * half)) & 0xF).to(tl.int8)  # [KOB, 8, lane, j, i, half]
    # a row's columns run ko, j, i, lane, half (column 32 j + 8 i + 2 lane + half of the k-tile)
    q = tl.reshape(tl.permute(q, (1, 0, 3, 4, 2, 5)), (8, KOB * T // 2, 32))
    # each run of 32 columns lies in one group (GROUP is a multiple of 32)
    runs = tl.program_id(1) * (KOB * T // 2) + tl.arange(0, KOB * T // 2)[None, :, None]
    row = nt * 8 + tl.arange(0, 8)[:, None, None]
    sz = sz_ptr + ((runs * 32) // GROUP * N + row) * 2
    scale = tl.load(sz).to(tl.float32)
    zero = tl.load(sz + 1).to(tl.float32)
    value = ((q.to(tl.float32) - 8.0) * scale + zero).to(out_ptr.dtype.element_ty)
    col = runs * 32 + tl.arange(0, 32)[None, None, :]
    tl.store(out_ptr + row.to(tl.int64) * K + col, value)


def launch_int4pack_dequant(
    packed: torch.Tensor, scales_and_zeros: torch.Tensor, *, out_features: int, in_features: int, group_size: int,
    inner_k_tiles: int, dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """The ``[out_features, in_features]`` weight that ``packed`` / ``scales_and_zeros`` stand for."""
    out = torch.empty((out_features, in_features), dtype=dtype, device=packed.device)
    k_tiles = in_features // (16 * inner_k_tiles)
    per_program = 2 if k_tiles % 2 == 0 else 1  # k-tiles per program: no masks (down_proj's 107 is odd)
    grid = (out_features // 8, k_tiles // per_program)
    _int4pack_dequant_kernel[grid](packed, scales_and_zeros, out, out_features, in_features, k_tiles,
                                   GROUP=group_size, T=inner_k_tiles, KOB=per_program, num_warps=4)
    return out
