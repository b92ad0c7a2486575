"""A Triton W4A16 GEMM over glmkb's "runs" INT4 layout, for 9-256 rows of x (decode batches, short prompts).

Why. Past the row kernels' 8 rows the op dequantized the whole weight to bf16 and ran cuBLAS:
0.5 byte per weight read, 2 written, 2 read again, 4.5 bytes per weight per call whatever the
rows, 9x what the row kernels read. At 16 concurrent streams that is every decode step; tinygemm,
which the "triton" form replaces, takes up to 48 rows on its own tensor-core kernel. Here each
step dequantizes a ``BLOCK_N x BLOCK_K`` weight tile in registers and feeds it to the tensor
cores: 0.5 byte per weight from memory, no bf16 copy.

No permutation of either tile. In a run, byte ``i`` holds column ``i`` (low nibble) and column
``8 + i`` (high), so the low nibbles of a tile's bytes are the weight's columns ``16 r + i`` in
byte order and the high nibbles columns ``16 r + 8 + i``. The step is two dots over ``BLOCK_K / 2``:
low nibbles against x's columns ``16 r + i``, high nibbles against ``16 r + 8 + i``, x loaded at
those columns directly (the row kernel's ``col``).

Dequantization as in ``_int4_runs_dequant_kernel`` (``int4_gemv._dequantized_nibbles``, exact in
float32), then rounded to x's dtype: the same weight bits as dequantizing first,
so the product differs from dequantize + cuBLAS only in the order of the float32 sums. A step
stays inside one quantization group (``GROUP % BLOCK_K == 0``): one scale and zero per row of the
tile and step.

Not yet measured on a GPU: ``int4_gemv_op`` times its tiles against dequantize + cuBLAS per row
bucket on first use and keeps the faster.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm.int4_runs import RUN
from llm.kernels.gemv import reduce_split
from llm.kernels.grid_dependency import wait_for_inputs
from llm.kernels.int4_gemv import INTERPRET, _dequantized_nibbles
from llm.kernels.pdl import launch_pdl


@triton.jit
def _int4_runs_gemm_kernel(
    x_ptr, w_ptr, sz_ptr, bias_ptr, out_ptr, M, N, K, k_per_split, stride_xm, stride_wn, stride_szn, stride_om,
    stride_os, HAS_BIAS: tl.constexpr, GROUP: tl.constexpr, ASM: tl.constexpr, DOT_F32: tl.constexpr,
    PARTIAL: tl.constexpr, WEIGHT_FIRST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """``out = x @ W.T (+ bias)`` for a ``BLOCK_M x BLOCK_N`` output tile, ``BLOCK_K`` columns per
    step, over K-slice ``program_id(2)`` (``k_per_split`` columns, a multiple of ``BLOCK_K``; with
    ``PARTIAL`` float32 partial sums ``(split, M, N)`` that ``gemv._split_reduce_kernel`` adds).
    ``WEIGHT_FIRST``: ``W @ x.T``, the dequantized weight as the A operand, which Hopper's wgmma takes
    from registers (no shared-memory round trip). ``DOT_F32``: the dots in float32 (IEEE), the
    dequantized weight unrounded: float32 x, and Triton's interpreter, whose bf16 ``tl.dot`` is
    wrong (as ``decode_attention``'s ``DOT_F32`` says)."""
    VEC: tl.constexpr = 8  # bytes per run
    KB: tl.constexpr = BLOCK_K // 2
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    pid_s = tl.program_id(2)
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    m_ok, n_ok = rm < M, rn < N
    r = tl.arange(0, KB)
    col = (r // VEC) * (2 * VEC) + r % VEC  # byte r's low-nibble column; its high nibble's is col + 8
    x_ptrs = x_ptr + rm[:, None].to(tl.int64) * stride_xm + col[None, :]
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + (k_start // 2 + r)[None, :]
    sz_ptrs = sz_ptr + rn.to(tl.int64) * stride_szn
    dtype: tl.constexpr = tl.float32 if DOT_F32 else x_ptr.dtype.element_ty
    wait_for_inputs(PDL)
    if WEIGHT_FIRST:
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        k_ok = (k + col) < K  # whole runs: K is a multiple of 16
        x_ok = m_ok[:, None] & k_ok[None, :]
        x_lo = tl.load(x_ptrs + k, mask=x_ok, other=0.0).to(dtype)
        x_hi = tl.load(x_ptrs + k + VEC, mask=x_ok, other=0.0).to(dtype)
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0, eviction_policy="evict_first")
        sz = tl.load(sz_ptrs + k // GROUP, mask=n_ok, other=0)
        s = (sz << 16).to(tl.float32, bitcast=True)[:, None]
        z = (sz & -65536).to(tl.float32, bitcast=True)[:, None]
        w_lo, w_hi = _dequantized_nibbles(w, s, z, ASM)
        w_lo, w_hi = w_lo.to(dtype), w_hi.to(dtype)
        if WEIGHT_FIRST and DOT_F32:
            acc_t = tl.dot(w_lo, tl.trans(x_lo), acc_t, input_precision="ieee")
            acc_t = tl.dot(w_hi, tl.trans(x_hi), acc_t, input_precision="ieee")
        elif WEIGHT_FIRST:
            acc_t = tl.dot(w_lo, tl.trans(x_lo), acc_t)
            acc_t = tl.dot(w_hi, tl.trans(x_hi), acc_t)
        elif DOT_F32:
            acc = tl.dot(x_lo, tl.trans(w_lo), acc, input_precision="ieee")
            acc = tl.dot(x_hi, tl.trans(w_hi), acc, input_precision="ieee")
        else:
            acc = tl.dot(x_lo, tl.trans(w_lo), acc)
            acc = tl.dot(x_hi, tl.trans(w_hi), acc)
        w_ptrs += KB
    if WEIGHT_FIRST:
        acc = tl.trans(acc_t)
    ok = m_ok[:, None] & n_ok[None, :]
    if PARTIAL:
        tl.store(out_ptr + pid_s * stride_os + rm[:, None].to(tl.int64) * stride_om + rn[None, :], acc, mask=ok)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        out = out_ptr + rm[:, None].to(tl.int64) * stride_om + rn[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=ok)


def launch_int4_runs_gemm(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *,
    group_size: int, block_m: int = 16, block_n: int = 64, block_k: int = 128, num_warps: int = 4,
    num_stages: int = 3, split_k: int = 1, weight_first: bool = False, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x (M, K) @ W.T (+ bias)`` for a "runs" weight ``packed`` ``[N, K/2]`` with
    ``scales_zeros`` ``[N, K/group]``, in ``x``'s dtype (bf16 or fp16 on the tensor cores, float32 in IEEE dots), into
    ``out`` (``(M, N)``, unit stride along N) when given. ``split_k`` K-slices of whole steps: at a
    prompt's 64 rows N / BLOCK_N programs alone (64-72 for the 6B's 4096-wide outputs) leave half of
    132 SMs idle, each walking all of K."""
    rows, k = x.shape
    n = packed.shape[0]
    if k != packed.shape[1] * 2 or k % RUN or x.stride(1) != 1:
        raise ValueError(f"the INT4 GEMM takes rows of {packed.shape[1] * 2} contiguous columns, not {tuple(x.shape)}")
    if block_k < 2 * RUN or group_size % block_k:
        raise ValueError(f"BLOCK_K {block_k} must be >= 32 and divide the group ({group_size}): one scale per step")
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device) if out is None else out
    per_split = triton.cdiv(triton.cdiv(k, block_k), max(1, split_k)) * block_k  # whole steps per slice
    split = triton.cdiv(k, per_split)
    target = out if split == 1 else torch.empty((split, rows, n), dtype=torch.float32, device=x.device)
    dot_f32 = INTERPRET or x.dtype == torch.float32
    pdl = launch_pdl(x.device)
    _int4_runs_gemm_kernel[(triton.cdiv(n, block_n), triton.cdiv(rows, block_m), split)](
        x, packed, scales_zeros, bias if bias is not None else out, target, rows, n, k, per_split, x.stride(0),
        packed.stride(0), scales_zeros.stride(0), target.stride(-2), target.stride(0) if split > 1 else 0,
        HAS_BIAS=bias is not None, GROUP=group_size, ASM=not INTERPRET and x.device.type == "cuda",
        DOT_F32=dot_f32, PARTIAL=split > 1, WEIGHT_FIRST=weight_first,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, PDL=pdl, num_warps=num_warps, num_stages=num_stages,
        launch_pdl=pdl,
    )
    if split > 1:
        reduce_split(target, bias, out)
    return out
