"""A Triton GEMV for decode-sized batches: ``y = x @ W.T (* scale) (+ bias)`` reading W once.

At batch 1..16 a linear layer reads its whole weight to do 2 FLOPs per weight per row, so its
time is the weight's bytes over memory bandwidth. Measured on an H200 (docs/PERFORMANCE.md,
"quant" and kernel-group tables): today's INT8 layer under ``torch.compile`` decodes at 0.94x
bf16 although it reads half the bytes, and bf16's o_proj / q/k/v / down GEMVs run at 68-87 % of
copy bandwidth. This kernel reads the int8 (or bf16/fp16) weight tile by tile, converts it in
registers, accumulates in float32 and applies the per-output-channel scale and bias in the
epilogue, so an INT8 layer reads 1 byte per weight and nothing else of its size.

One row (the single-user step) runs ``_gemv_row_kernel``: narrow tiles (2-8 outputs) over
2-8 KiB of K per step, x as a 1-D vector; with an int8 weight ``_int8_row_kernel`` (8-byte runs
per thread, summed every step, bytes unpacked by ``prmt``). Otherwise each program owns ``BLOCK_N`` output
channels and one K-slice (``split_k`` slices for tall-K
shapes such as down_proj, K=13696, where N/BLOCK_N programs alone would leave SMs idle); it
loads each ``BLOCK_N x BLOCK_K`` weight tile once and all M rows of x against it (past 64 rows,
an INT8 prompt where ``gemv_configs.INT8_GEMM_ROWS`` allows it, ``BLOCK_M`` rows per program: the
row tiles are the grid's first axis, so the programs of one weight tile run side by side and L2
serves all but the first):

- M <= 4: broadcast multiply-add into a float32 accumulator of the tile's shape (``(BLOCK_N,
  BLOCK_K)`` for one row, ``(BLOCK_M, BLOCK_N, BLOCK_K)`` for 2-4), reduced over K once at the
  end (the classic GEMV: no cross-thread reduction per step);
- M 5..16 with 16-bit activations (5..64 for int8 weights, short prompts): ``tl.dot`` on a 16-64
  row tile (rows past M masked), the tensor
  cores doing the multiply; compute is never the limit here, the layout conversion is cheaper
  than a 16-deep register accumulator.

Split-K writes float32 partial sums ``(split, M, N)``; a second small kernel adds them and applies
scale, bias and the output cast (deterministic, unlike atomics, and needs no zeroed buffer).

This module imports Triton; ``llm.kernels.gemv_op`` wraps it as a torch custom op and falls back
to PyTorch where Triton is missing.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from llm.kernels.gemv_configs import DOT_MIN_ROWS, MAX_BLOCK_M, GemvConfig
from llm.kernels.give_up import INTERPRET
from llm.kernels.grid_dependency import wait_for_inputs
from llm.kernels.pdl import launch_pdl



def block_rows(rows: int, *, dot: bool) -> int:
    """The ``BLOCK_M`` for ``rows`` rows: a power of two, at least 16 for ``tl.dot``."""
    return max(16, triton.next_power_of_2(rows)) if dot else triton.next_power_of_2(rows)


@triton.jit
def _load_weight_tile(w_ptrs, n_ok, k_ok, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr):
    """A ``(BLOCK_N, BLOCK_K)`` weight tile, masked only where N or K do not fill it. The weight
    streams through once (evict_first keeps it from pushing x out of L2; every program re-reads x,
    evict_last). Measured on the H200 at M = 1 with the tiles of gemv_configs.TUNED: bf16 q/k/v
    11.1 us vs cuBLAS 13.8, down 28.0 vs 31.7 (run 15)."""
    if EVEN_K:
        if EVEN_N:
            w = tl.load(w_ptrs, eviction_policy="evict_first")
        else:
            w = tl.load(w_ptrs, mask=n_ok[:, None], other=0, eviction_policy="evict_first")
    else:
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0, eviction_policy="evict_first")
    return w


@triton.jit
def _as_float32(w, INT8: tl.constexpr):
    """The weight tile in float32. int8 goes through float bits, 2^23 + (v + 128), minus that
    offset: an integer and a float add instead of an I2F conversion (16 per clock per SM on
    sm80/sm90); run 15: INT8 gate_up 37.3 -> 34.3 us, down 22.0 -> 19.2 us."""
    if INT8:
        wf = (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True) - 8388736.0
    else:
        wf = w.to(tl.float32)
    return wf


@triton.jit
def _gemv_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr,
    M, N, K, k_per_split,
    stride_xm, stride_wn, stride_om, stride_os,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, PARTIAL: tl.constexpr, EVEN_K: tl.constexpr,
    EVEN_N: tl.constexpr, USE_DOT: tl.constexpr, INT8: tl.constexpr, WEIGHT_FIRST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_inputs(PDL)
    pid_m = tl.program_id(0)  # row tiles first: the programs of one weight tile run side by side, L2 serves the rest
    pid_n = tl.program_id(1)
    pid_s = tl.program_id(2)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rk = tl.arange(0, BLOCK_K)
    m_ok = rm < M
    n_ok = rn < N
    k_start = pid_s * k_per_split
    k_end = tl.minimum(k_start + k_per_split, K)
    x_ptrs = x_ptr + rm[:, None] * stride_xm + (k_start + rk)[None, :]
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + (k_start + rk)[None, :]
    if USE_DOT and WEIGHT_FIRST:
        acc_t = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    elif USE_DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    elif BLOCK_M == 1:  # one row: a 2-D accumulator, the plain GEMV layout
        acc2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    else:
        acc3 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k in range(k_start, k_end, BLOCK_K):
        k_ok = (k + rk) < K
        if EVEN_K:
            x = tl.load(x_ptrs, mask=m_ok[:, None], other=0.0, eviction_policy="evict_last")
        else:
            x = tl.load(x_ptrs, mask=m_ok[:, None] & k_ok[None, :], other=0.0, eviction_policy="evict_last")
        w = _load_weight_tile(w_ptrs, n_ok, k_ok, EVEN_K, EVEN_N)
        if USE_DOT and WEIGHT_FIRST:  # the converted weight is the A operand, which Hopper's wgmma
            acc_t += tl.dot(w.to(x.dtype), tl.trans(x))  # may take from registers (no shared-memory round trip)
        elif USE_DOT:
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        else:
            wf = _as_float32(w, INT8)
            if BLOCK_M == 1:
                acc2 += wf * x.to(tl.float32)  # (BLOCK_N, BLOCK_K) * (1, BLOCK_K)
            else:
                acc3 += x.to(tl.float32)[:, None, :] * wf[None, :, :]
        x_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    if USE_DOT and WEIGHT_FIRST:
        acc = tl.trans(acc_t)
    elif BLOCK_M == 1 and not USE_DOT:
        acc = tl.sum(acc2, axis=1)[None, :]
    elif not USE_DOT:
        acc = tl.sum(acc3, axis=2)
    out_mask = m_ok[:, None] & n_ok[None, :]
    if PARTIAL:  # float32 partial sums of this K-slice; _split_reduce_kernel finishes
        tl.store(out_ptr + pid_s * stride_os + rm[:, None] * stride_om + rn[None, :], acc, mask=out_mask)
    else:
        if HAS_SCALE:
            acc = acc * tl.load(scale_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        if HAS_BIAS:
            acc = acc + tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(out_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _split_reduce_kernel(
    part_ptr, scale_ptr, bias_ptr, out_ptr, N, stride_ps, stride_pm, stride_om,
    SPLIT: tl.constexpr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_inputs(PDL)
    row = tl.program_id(1)
    rn = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = rn < N
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT):
        acc += tl.load(part_ptr + s * stride_ps + row * stride_pm + rn, mask=ok, other=0.0)
    if HAS_SCALE:
        acc = acc * tl.load(scale_ptr + rn, mask=ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + rn, mask=ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * stride_om + rn, acc.to(out_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _store_row(y, rn, n_ok, scale_ptr, bias_ptr, out_ptr, HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A one-row kernel's epilogue: ``y`` (float32 per output) times scale, plus bias, stored."""
    if HAS_SCALE:
        y = y * tl.load(scale_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)
    tl.store(out_ptr + rn, y.to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _gemv_row_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, N, K, stride_wn,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """One row of x (M = 1, the single-user decode step) against a float weight: x is loaded as a 1-D vector and
    broadcast over the weight tile in the tile's own layout. Loaded as a ``(1, BLOCK_K)`` tile as
    in ``_gemv_kernel``, Triton converted its layout every step: the same tiles ran 25 % slower
    (run 15, H200, bf16: gate_up 64.0 against 51.4 us, LM head 144.9 against 117.5)."""
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rk = tl.arange(0, BLOCK_K)
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + rk[None, :]
    wait_for_inputs(PDL)
    acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        k_ok = (k + rk) < K
        if EVEN_K:
            x = tl.load(x_ptr + k + rk, eviction_policy="evict_last")
        else:
            x = tl.load(x_ptr + k + rk, mask=k_ok, other=0.0, eviction_policy="evict_last")
        w = _load_weight_tile(w_ptrs, n_ok, k_ok, EVEN_K, EVEN_N)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        w_ptrs += BLOCK_K
    _store_row(tl.sum(acc, axis=1), rn, n_ok, scale_ptr, bias_ptr, out_ptr, HAS_SCALE, HAS_BIAS)


@triton.jit
def _int8_as_float32(w, ASM: tl.constexpr):
    """An int8 tile in float32, through float bits as in ``_as_float32``. ``ASM``: four values per
    32-bit register by one ``xor`` (q -> q + 128, unsigned) and a ``prmt`` each that places the
    byte under the exponent of 2^23: 1.25 integer instructions per weight instead of 2 (a sign
    extension and an add), which is what an H200 spends them on at batch 1 (run 17 lab,
    ``docs/PERFORMANCE.md``)."""
    if ASM:
        wf = tl.inline_asm_elementwise(
            asm="""{
            .reg .b32 t;
            xor.b32 t, $4, 0x80808080;
            prmt.b32 $0, t, 0x4B000000, 0x7440;
            prmt.b32 $1, t, 0x4B000000, 0x7441;
            prmt.b32 $2, t, 0x4B000000, 0x7442;
            prmt.b32 $3, t, 0x4B000000, 0x7443;
            }""",
            constraints="=r,=r,=r,=r,r", args=[w], dtype=tl.float32, is_pure=True, pack=4)
    else:
        wf = (w.to(tl.int32) + 0x4B000080).to(tl.float32, bitcast=True)
    return wf - 8388736.0  # 2^23 + 128: exact, leaves q


@triton.jit
def _int8_run_sums(w, x, ASM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, VEC: tl.constexpr):
    """``(BLOCK_N, BLOCK_K // VEC)`` sums of weight times x over each thread's run of VEC columns."""
    prod = _int8_as_float32(w, ASM) * x.to(tl.float32)[None, :]
    return tl.sum(tl.reshape(prod, (BLOCK_N, BLOCK_K // VEC, VEC)), axis=2)


@triton.jit
def _int8_row_kernel(
    x_ptr, w_ptr, scale_ptr, bias_ptr, out_ptr, N, K, stride_wn: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr,
    ASM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """One row of x against an int8 weight. Two differences from ``_gemv_row_kernel``, each
    measured (run 17 lab, H200, M = 1; q/k/v, o_proj, gate_up: 9.05 / 7.10 / 34.1 us -> 7.07 /
    6.48 / 29.9 us):

    - the column offsets are written so Triton can prove only 8-byte runs contiguous: each thread
      then holds 8 int8 weights (one 8-byte load) against x's 8 bf16 (one 16-byte load), the same
      count, and x needs no per-step layout conversion through shared memory (with 16-byte weight
      runs every step had 4 barriers);
    - the products are summed over each run every step, so the accumulator is 1/8 of the tile
      and 2 KiB of K per step fit in registers.

    The row stride is a compile-time constant (one compile per layer width), so each row's load
    takes an immediate offset from one pointer. With it, where BLOCK_K does not divide K
    (down_proj, 13696) the whole steps run unmasked and one masked step (in 8-column runs, so the
    loads stay vectorised) finishes: sm_90 SASS, Triton 3.6, down's 8 x 2048 tile 4.72 -> 4.05
    instructions per weight, 61 -> 48 registers (``bench.sass``). With a runtime stride that
    masked last step had taken the kernel from 53 to 168 registers under Triton 3.6 and slowed
    every shape (run 17, gate_up 29.3 -> 44.7 us), so until run 21 every step was masked."""
    VEC: tl.constexpr = 8
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    r = tl.arange(0, BLOCK_K)
    rk = (r // VEC) * VEC + r % VEC  # == r; contiguity provable over VEC only (see above)
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + rk[None, :]
    wait_for_inputs(PDL)
    acc = tl.zeros((BLOCK_N, BLOCK_K // VEC), dtype=tl.float32)
    whole = (K // BLOCK_K) * BLOCK_K
    for k in range(0, whole, BLOCK_K):
        x = tl.load(x_ptr + k + r, eviction_policy="evict_last")
        if EVEN_N:
            w = tl.load(w_ptrs, eviction_policy="evict_first")
        else:
            w = tl.load(w_ptrs, mask=n_ok[:, None], other=0, eviction_policy="evict_first")
        acc += _int8_run_sums(w, x, ASM, BLOCK_N, BLOCK_K, VEC)
        w_ptrs += BLOCK_K
    if not EVEN_K:
        k_ok = (whole + rk) < K
        x = tl.load(x_ptr + whole + rk, mask=k_ok, other=0.0, eviction_policy="evict_last")
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0, eviction_policy="evict_first")
        acc += _int8_run_sums(w, x, ASM, BLOCK_N, BLOCK_K, VEC)
    _store_row(tl.sum(acc, axis=1), rn, n_ok, scale_ptr, bias_ptr, out_ptr, HAS_SCALE, HAS_BIAS)


def launch_gemv(
    x: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor | None,
    bias: torch.Tensor | None,
    config: GemvConfig,
) -> torch.Tensor:
    """``x (M, K) @ weight (N, K).T``, times ``scales`` (N,) and plus ``bias`` (N,), in ``x``'s dtype.

    ``x`` and ``weight`` need unit stride along K; ``weight`` may be int8 or the dtype of ``x``.
    """
    rows, k = x.shape
    n = weight.shape[0]
    if rows == 1 and config.split_k <= 1:
        return _launch_row(x, weight, scales, bias, config)
    dot = rows >= DOT_MIN_ROWS and x.dtype in (torch.float16, torch.bfloat16)
    block_m = min(block_rows(rows, dot=dot), config.block_m or MAX_BLOCK_M)
    block_k = config.block_k
    blocks_k = triton.cdiv(k, block_k)
    per_split = triton.cdiv(blocks_k, max(1, config.split_k)) * block_k  # whole K-blocks per slice
    split = triton.cdiv(k, per_split)
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    target = out if split == 1 else torch.empty((split, rows, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(rows, block_m), triton.cdiv(n, config.block_n), split)
    dummy = out  # never read when the HAS_ flag is off
    pdl = launch_pdl(x.device)
    _gemv_kernel[grid](
        x, weight, scales if scales is not None else dummy, bias if bias is not None else dummy, target,
        rows, n, k, per_split,
        x.stride(0), weight.stride(0), target.stride(-2), target.stride(0) if split > 1 else 0,
        HAS_SCALE=scales is not None, HAS_BIAS=bias is not None, PARTIAL=split > 1,
        EVEN_K=k % block_k == 0, EVEN_N=n % config.block_n == 0, USE_DOT=dot, INT8=weight.dtype == torch.int8,
        WEIGHT_FIRST=dot and config.weight_first, BLOCK_M=block_m, BLOCK_N=config.block_n, BLOCK_K=block_k, PDL=pdl,
        num_warps=config.num_warps, num_stages=config.num_stages, launch_pdl=pdl,
    )
    if split > 1:
        reduce_split(target, bias, out, scales=scales)
    return out


def reduce_split(partial: torch.Tensor, bias: torch.Tensor | None, out: torch.Tensor, *,
                 scales: torch.Tensor | None = None) -> None:
    """``out = sum(partial) (* scales) (+ bias)``: the float32 K-slice sums ``(split, M, N)`` of a
    split-K launch, added in slice order (deterministic, unlike atomics), into ``out`` ``(M, N)``."""
    split, rows, n = partial.shape
    block = 1024
    pdl = launch_pdl(out.device)
    _split_reduce_kernel[(triton.cdiv(n, block), rows)](
        partial, scales if scales is not None else out, bias if bias is not None else out, out,
        n, partial.stride(0), partial.stride(1), out.stride(0),
        SPLIT=split, HAS_SCALE=scales is not None, HAS_BIAS=bias is not None, BLOCK=block, PDL=pdl,
        num_warps=4, launch_pdl=pdl,
    )


def _launch_row(
    x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None, config: GemvConfig
) -> torch.Tensor:
    """``launch_gemv`` for one row: ``_gemv_row_kernel`` (``_int8_row_kernel`` for int8), one
    program per ``block_n`` outputs."""
    n, k = weight.shape
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    dummy = out  # never read when the HAS_ flag is off
    pdl = launch_pdl(x.device)
    if weight.dtype == torch.int8:
        if config.block_k % 8:
            raise ValueError(f"the int8 row kernel steps K by multiples of 8, not {config.block_k}")
        _int8_row_kernel[(triton.cdiv(n, config.block_n),)](
            x, weight, scales if scales is not None else dummy, bias if bias is not None else dummy, out,
            n, k, weight.stride(0),
            HAS_SCALE=scales is not None, HAS_BIAS=bias is not None, EVEN_K=k % config.block_k == 0,
            EVEN_N=n % config.block_n == 0, ASM=not INTERPRET and x.device.type == "cuda",
            BLOCK_N=config.block_n, BLOCK_K=config.block_k, PDL=pdl,
            num_warps=config.num_warps, num_stages=config.num_stages, launch_pdl=pdl,
        )
        return out
    _gemv_row_kernel[(triton.cdiv(n, config.block_n),)](
        x, weight, scales if scales is not None else dummy, bias if bias is not None else dummy, out,
        n, k, weight.stride(0),
        HAS_SCALE=scales is not None, HAS_BIAS=bias is not None, EVEN_K=k % config.block_k == 0,
        EVEN_N=n % config.block_n == 0, BLOCK_N=config.block_n, BLOCK_K=config.block_k, PDL=pdl,
        num_warps=config.num_warps, num_stages=config.num_stages, launch_pdl=pdl,
    )
    return out
