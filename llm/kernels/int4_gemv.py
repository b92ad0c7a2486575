"""Triton W4A16 GEMVs for 1 and 2-4 rows of x, over glmkb's "runs" INT4 layout, and its dequantization.

Why a layout of its own. The INT8 row kernel (``llm.kernels.gemv._int8_row_kernel``) reads 3.4-3.9
TB/s on the H200 because each thread loads 8 weight bytes against x's 8 bf16 (one 16-byte load)
in the same register layout, so x never goes through shared memory (run 17). tinygemm's INT4
layout is built for tensor-core fragments, and the four Triton INT4 forms tried so far over
glmkb's ``pack_int4`` (column 2j low, 2j+1 high) either read x at a stride or loaded 4 bytes of
weight per thread per step: 0.1-0.35 of copy bandwidth in float32 (run 15), 0.85x tinygemm with
bf16 pairs (run 17). Here each run of 16 columns is 8 bytes, byte ``i`` holding column ``i`` in
its low nibble and column ``8 + i`` in its high nibble, so a thread's 8-byte weight load lines up
with two 16-byte x loads (columns 0-7 and 8-15) in the INT8 kernel's own register layout.

Unpacking: four bytes (one 32-bit register) give 8 floats with 3 shifts and 8 ``lop3``; each
nibble lands at mantissa bits 16-19 under 128's exponent (low nibbles: 128 + n) or at bits 12-15
under 2048's (high nibbles: 2048 + n). The products (128 + n) x and (2048 + n) x are exact in
float32, and the offsets come off once per run through x's own sums:
``sum((n - z) s x) = s (d - 128 sum x_lo - 2048 sum x_hi - z sum x)``, with ``d`` the run's sum
of products. That is ~1.4 integer instructions and one FMA per weight (~3.8-4.3 instructions
per weight in the sm_90 loop, Triton 3.6, against the INT8 row kernel's 4.4 per weight: about
twice per byte). Scales and integer zero points travel as one int32 per row and group (bf16
``s`` in the low half, bf16 ``z`` in the high half), loaded by an inline ``ld.global`` so the run
sums keep their layout (``_load_scales_zeros``).

Not yet measured on a GPU (sessions 11 and 12 had none lent): ``bench.gemv`` times the layer
against tinygemm and sweeps its tiles, ``bench.decode --quantization none int4 int4-triton``
compares them end to end. docs/PERFORMANCE.md, "Session 12", has the SASS figures.
"""

from __future__ import annotations


import torch
import triton
import triton.language as tl

from llm.int4_runs import RUN
from llm.kernels.gemv import INTERPRET, _store_row  # INTERPRET: the interpreter runs no inline assembly
from llm.kernels.grid_dependency import wait_for_inputs
from llm.kernels.pdl import launch_pdl



# Where each nibble of a 32-bit word (4 packed bytes) lands: a shifted copy of the word and one
# lop3. Low nibbles go to bits 16-19 under 128's exponent (the float 128 + n), high nibbles to bits
# 12-15 under 2048's (2048 + n); l = word << 8, r = word >> 8, t = word rotated by 16.
_SHIFTS = "shl.b32 l, {w}, 8; shr.u32 r, {w}, 8; shf.l.wrap.b32 t, {w}, {w}, 16;"
_LOW_FROM, _HIGH_FROM = ("t", "l", "{w}", "r"), ("l", "{w}", "r", "t")  # bytes 0..3
_LOW_BITS, _HIGH_BITS = "0x000F0000, 0x43000000", "0x0000F000, 0x45000000"


def _nibble_float(dest: str, word: str, byte: int, *, high: bool) -> str:
    """PTX: ``dest`` = the float 128 + (low nibble) or 2048 + (high nibble) of ``byte`` of ``word``."""
    source = (_HIGH_FROM if high else _LOW_FROM)[byte].format(w=word)
    return f"lop3.b32 {dest}, {source}, {_HIGH_BITS if high else _LOW_BITS}, 0xEA;"


def _nibbles_asm() -> str:
    """Four bytes in ``$8`` -> low-nibble floats in ``$0-$3``, high-nibble floats in ``$4-$7``."""
    lines = [_SHIFTS.format(w="$8")]
    lines += [_nibble_float(f"${4 * high + b}", "$8", b, high=bool(high)) for high in (0, 1) for b in range(4)]
    return "{ .reg .b32 l, r, t; " + " ".join(lines) + " }"


def _run_sum_asm(rows: int = 1) -> str:
    """Eight bytes in ``$8, $9``, then for each of ``rows`` rows of x its low columns (8 registers)
    and its high ones (8): each row's sum of products over the run, chained in ``$0 .. $rows-1``
    (the other outputs of the 8 zero). The nibbles are unpacked once for all rows."""
    acc = [f"a{r}" for r in range(rows)]
    lines, first = [], True
    for half, word in enumerate(("$8", "$9")):
        lines.append(_SHIFTS.format(w=word))
        for high in (False, True):
            for b in range(4):
                lines.append(_nibble_float("v", word, b, high=high))
                for r in range(rows):
                    x = 10 + 16 * r + (8 if high else 0) + 4 * half + b
                    a = acc[r]
                    lines.append(f"mul.rn.f32 {a}, v, ${x};" if first else f"fma.rn.f32 {a}, v, ${x}, {a};")
                first = False
    lines += [f"mov.b32 ${r}, {acc[r]};" for r in range(rows)] + [f"mov.b32 ${i}, 0;" for i in range(rows, 8)]
    return "{ .reg .b32 l, r, t, v; .reg .f32 " + ", ".join(acc) + "; " + " ".join(lines) + " }"


NIBBLES_ASM = tl.constexpr(_nibbles_asm())
RUN_SUM_ASM = tl.constexpr(_run_sum_asm())
RUN_SUMS_2_ASM = tl.constexpr(_run_sum_asm(2))
RUN_SUMS_4_ASM = tl.constexpr(_run_sum_asm(4))


@triton.jit
def _nibbles_as_float32(w, ASM: tl.constexpr):
    """An int8 tile of packed bytes as two float32 tiles: ``128 + low nibble``, ``2048 + high nibble``."""
    if ASM:
        lo, hi = tl.inline_asm_elementwise(
            asm=NIBBLES_ASM,
            constraints="=r,=r,=r,=r,=r,=r,=r,=r,r", args=[w], dtype=(tl.float32, tl.float32), is_pure=True, pack=4)
    else:
        b = w.to(tl.int32) & 0xFF
        lo = (((b & 15) << 16) | 0x43000000).to(tl.float32, bitcast=True)
        hi = (((b >> 4) << 12) | 0x45000000).to(tl.float32, bitcast=True)
    return lo, hi


@triton.jit
def _dequantized_nibbles(w, s, z, ASM: tl.constexpr):
    """A byte tile's low and high nibbles as ``(n - z) * s`` in float32, ``s`` and ``z`` broadcast
    to the tile: ``(128 + n) s - (128 + z) s``, one FMA per value, and exact: ``s`` is a bf16 (8
    significant bits), so both products and their difference fit float32's 24 bits."""
    lo, hi = _nibbles_as_float32(w, ASM)  # 128 + n, 2048 + n
    return lo * s - (z + 128.0) * s, hi * s - (z + 2048.0) * s


@triton.jit
def _run_sums(w, x_lo, x_hi, ASM: tl.constexpr, BLOCK_N: tl.constexpr, RUNS: tl.constexpr):
    """``(BLOCK_N, RUNS)``: each run's ``sum((128 + lo) x_lo + (2048 + hi) x_hi)``. On the GPU one
    inline-assembly block per thread and run: 6 shifts, 16 ``lop3`` and a chain of 16 FMAs, the sum
    left in the run's first element (the others 0, dropped by three ``tl.split``). Written as
    Triton arithmetic, the same sums took a multiply, an FMA and a reduction add per pair of
    weights (sm_90 SASS: 1.6 instructions per weight for the products instead of 1)."""
    if ASM:
        sums = tl.inline_asm_elementwise(
            asm=RUN_SUM_ASM,
            constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r" + ",r" * 16,
            args=[w, x_lo[None, :], x_hi[None, :]], dtype=tl.float32, is_pure=True, pack=8)
        first, _ = tl.split(tl.reshape(sums, (BLOCK_N, RUNS, 2, 2, 2)))
        first, _ = tl.split(first)
        first, _ = tl.split(first)
        return first
    lo, hi = _nibbles_as_float32(w, ASM)
    return _plain_run_sums(lo, hi, x_lo, x_hi, BLOCK_N, RUNS)


@triton.jit
def _plain_run_sums(lo, hi, x_lo, x_hi, BLOCK_N: tl.constexpr, RUNS: tl.constexpr):
    """``_run_sums`` in Triton arithmetic over unpacked nibbles (the interpreter's path)."""
    return tl.sum(tl.reshape(lo * x_lo[None, :] + hi * x_hi[None, :], (BLOCK_N, RUNS, 8)), axis=2)


@triton.jit
def _load_scales_zeros(ptrs, mask, ASM: tl.constexpr):
    """One int32 per row and run. On the GPU an ``ld.global`` in inline assembly: ``tl.load`` would
    take the layout Triton's coalescing picks for loads, and each step would move the run sums
    through shared memory to meet it (Triton 3.6, sm_90 SASS of the first version: 9 barriers in
    the kernel, against the final reduction's 4 now); the assembly keeps the run sums' own layout.
    Addresses repeat across the 8 runs of a group: L1 serves them. ``mask`` None: every address is
    in bounds, and no predicate is set per row (sm_90 SASS of a 16-row tile: 16 ``PLOP3`` fewer
    per step)."""
    if ASM:
        if mask is None:
            sz = tl.inline_asm_elementwise(
                asm="ld.global.nc.L1::evict_last.b32 $0, [$1];",
                constraints="=r,l", args=[ptrs], dtype=tl.int32, is_pure=True, pack=1)
        else:
            sz = tl.inline_asm_elementwise(
                asm="""{
                .reg .pred p;
                setp.ne.b32 p, $2, 0;
                mov.b32 $0, 0;
                @p ld.global.nc.L1::evict_last.b32 $0, [$1];
                }""",
                constraints="=r,l,r", args=[ptrs, mask.to(tl.int32)], dtype=tl.int32, is_pure=True, pack=1)
    elif mask is None:
        sz = tl.load(ptrs)
    else:
        sz = tl.load(ptrs, mask=mask, other=0)
    return sz


@triton.jit
def _row_step(acc, x_ptr, w_ptrs, sz_rows, k, K, col, runs, n_ok, MASK_K: tl.constexpr, EVEN_N: tl.constexpr,
              GROUP: tl.constexpr, ASM: tl.constexpr, BLOCK_N: tl.constexpr, KB: tl.constexpr):
    """One ``BLOCK_K`` step of ``_int4_runs_row_kernel`` at column ``k``: ``acc`` plus each run's
    ``s * (sum((n - z) x))``; ``MASK_K``: the step may pass the end of K (the tail)."""
    VEC: tl.constexpr = 8
    # scales first: placed after the products (as ptxas did), each step would wait on these loads
    run_col = k + runs * (2 * VEC)
    sz_ptrs = sz_rows + (run_col // GROUP)[None, :]
    if MASK_K:
        sz = _load_scales_zeros(sz_ptrs, n_ok[:, None] & (run_col < K)[None, :], ASM)
        k_ok = (k + col) < K  # whole runs: K is a multiple of 16
        x_lo = tl.load(x_ptr + k + col, mask=k_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
        x_hi = tl.load(x_ptr + k + col + VEC, mask=k_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0, eviction_policy="evict_first")
    else:
        if EVEN_N:
            sz = _load_scales_zeros(sz_ptrs, None, ASM)
        else:
            sz = _load_scales_zeros(sz_ptrs, n_ok[:, None], ASM)
        x_lo = tl.load(x_ptr + k + col, eviction_policy="evict_last").to(tl.float32)
        x_hi = tl.load(x_ptr + k + col + VEC, eviction_policy="evict_last").to(tl.float32)
        if EVEN_N:
            w = tl.load(w_ptrs, eviction_policy="evict_first")
        else:
            w = tl.load(w_ptrs, mask=n_ok[:, None], other=0, eviction_policy="evict_first")
    d = _run_sums(w, x_lo, x_hi, ASM, BLOCK_N, KB // VEC)
    sum_lo = tl.sum(tl.reshape(x_lo, (KB // VEC, VEC)), axis=1)
    sum_hi = tl.sum(tl.reshape(x_hi, (KB // VEC, VEC)), axis=1)
    offsets = 128.0 * sum_lo + 2048.0 * sum_hi
    s = (sz << 16).to(tl.float32, bitcast=True)
    z = (sz & -65536).to(tl.float32, bitcast=True)
    return acc + s * ((d - offsets[None, :]) - z * (sum_lo + sum_hi)[None, :])


@triton.jit
def _int4_runs_row_kernel(
    x_ptr, w_ptr, sz_ptr, bias_ptr, out_ptr, N, K, stride_wn: tl.constexpr, stride_szn: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, GROUP: tl.constexpr,
    ASM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """One row of x against a "runs" INT4 weight: ``BLOCK_N`` outputs per program, ``BLOCK_K``
    columns (``BLOCK_K / 2`` bytes per row) per step, one run of 8 bytes per thread and row.

    The row strides are compile-time constants (one compile per layer width): each row's weight
    and scale loads then take an immediate offset from one pointer, where runtime strides cost
    a 64-bit address computation per row and step (sm_90 SASS, Triton 3.6, 16 x 2048 tile: 3.59
    -> 3.09 instructions per weight, 95 -> 71 registers, with the unpredicated scale loads).
    Where ``BLOCK_K`` does not divide K (down_proj's 13696) the steps run unmasked up to the
    last whole one and a masked step finishes, instead of masking every step."""
    VEC: tl.constexpr = 8  # bytes per run
    KB: tl.constexpr = BLOCK_K // 2
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    r = tl.arange(0, KB)
    rb = (r // VEC) * VEC + r % VEC  # == r; contiguity provable over one run only (the INT8 kernel's reason)
    col = (r // VEC) * (2 * VEC) + r % VEC  # the low nibble's column; the high nibble's is col + 8
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + rb[None, :]
    sz_rows = sz_ptr + rn[:, None].to(tl.int64) * stride_szn
    runs = tl.arange(0, KB // VEC)
    wait_for_inputs(PDL)
    acc = tl.zeros((BLOCK_N, KB // VEC), dtype=tl.float32)
    whole = (K // BLOCK_K) * BLOCK_K
    for k in range(0, whole, BLOCK_K):
        acc = _row_step(acc, x_ptr, w_ptrs, sz_rows, k, K, col, runs, n_ok, False, EVEN_N, GROUP, ASM, BLOCK_N, KB)
        w_ptrs += KB
    if not EVEN_K:
        acc = _row_step(acc, x_ptr, w_ptrs, sz_rows, whole, K, col, runs, n_ok, True, EVEN_N, GROUP, ASM, BLOCK_N,
                        KB)
    _store_row(tl.sum(acc, axis=1), rn, n_ok, bias_ptr, bias_ptr, out_ptr, False, HAS_BIAS)


@triton.jit
def _first_of_runs(sums, BLOCK_N: tl.constexpr, RUNS: tl.constexpr):
    """``(BLOCK_N, RUNS, 2, 2)`` groups of a ``(BLOCK_N, RUNS * 8)`` tile's run elements (c, b)
    split off: ``(e0, e1, e2, e3)``, each run's elements 0-3 as ``(BLOCK_N, RUNS)`` tiles."""
    c0, c1 = tl.split(tl.reshape(sums, (BLOCK_N, RUNS, 2, 2, 2)))  # element 4a + 2b + c
    b00, b01 = tl.split(c0)
    b10, b11 = tl.split(c1)
    e0, _ = tl.split(b00)
    e2, _ = tl.split(b01)
    e1, _ = tl.split(b10)
    e3, _ = tl.split(b11)
    return e0, e1, e2, e3


@triton.jit
def _row_terms(x_rows, k, col, x_ok, m: tl.constexpr, M, stride_xm, VEC: tl.constexpr, RUNS: tl.constexpr,
               MASK_K: tl.constexpr):
    """Row ``m`` of x for one step: its low and high columns in float32 and its per-run offsets
    ``128 sum x_lo + 2048 sum x_hi`` and sums ``sum x``. A row past ``M`` reads row ``M - 1``
    again (its sums are never stored): no row mask in the loop; ``x_ok`` applies where ``MASK_K``."""
    ptrs = x_rows + tl.minimum(m, M - 1) * stride_xm + k + col
    if MASK_K:
        x_lo = tl.load(ptrs, mask=x_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
        x_hi = tl.load(ptrs + VEC, mask=x_ok, other=0.0, eviction_policy="evict_last").to(tl.float32)
    else:
        x_lo = tl.load(ptrs, eviction_policy="evict_last").to(tl.float32)
        x_hi = tl.load(ptrs + VEC, eviction_policy="evict_last").to(tl.float32)
    sum_lo = tl.sum(tl.reshape(x_lo, (RUNS, VEC)), axis=1)
    sum_hi = tl.sum(tl.reshape(x_hi, (RUNS, VEC)), axis=1)
    return x_lo, x_hi, 128.0 * sum_lo + 2048.0 * sum_hi, sum_lo + sum_hi


@triton.jit
def _row_ok(rn, M, m: tl.constexpr):
    """``rn``'s shape of "row ``m`` exists". As a tensor: Triton 3.9's interpreter made
    ``n_ok & (M > m)`` (a tensor and a scalar comparison) a mask of another dtype than bool."""
    return (tl.zeros_like(rn) + M) > m


@triton.jit
def _rows_step(acc0, acc1, acc2, acc3, x_ptr, w_ptrs, sz_rows, k, K, M, stride_xm, col, runs, n_ok,
               MASK_K: tl.constexpr, EVEN_N: tl.constexpr, GROUP: tl.constexpr, ASM: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KB: tl.constexpr):
    """One ``BLOCK_K`` step of ``_int4_runs_rows_kernel`` at column ``k``: each row's accumulator
    plus its runs' ``s * (sum((n - z) x))``; ``MASK_K``: the step may pass the end of K (the tail)."""
    VEC: tl.constexpr = 8
    RUNS: tl.constexpr = KB // VEC
    run_col = k + runs * (2 * VEC)
    sz_ptrs = sz_rows + (run_col // GROUP)[None, :]
    k_ok = (k + col) < K  # whole runs: K is a multiple of 16
    if MASK_K:
        sz = _load_scales_zeros(sz_ptrs, n_ok[:, None] & (run_col < K)[None, :], ASM)
    elif EVEN_N:
        sz = _load_scales_zeros(sz_ptrs, None, ASM)
    else:
        sz = _load_scales_zeros(sz_ptrs, n_ok[:, None], ASM)
    lo0, hi0, off0, sx0 = _row_terms(x_ptr, k, col, k_ok, 0, M, stride_xm, VEC, RUNS, MASK_K)
    lo1, hi1, off1, sx1 = _row_terms(x_ptr, k, col, k_ok, 1, M, stride_xm, VEC, RUNS, MASK_K)
    if MASK_K:
        w = tl.load(w_ptrs, mask=n_ok[:, None] & k_ok[None, :], other=0, eviction_policy="evict_first")
    elif EVEN_N:
        w = tl.load(w_ptrs, eviction_policy="evict_first")
    else:
        w = tl.load(w_ptrs, mask=n_ok[:, None], other=0, eviction_policy="evict_first")
    s = (sz << 16).to(tl.float32, bitcast=True)
    z = (sz & -65536).to(tl.float32, bitcast=True)
    if BLOCK_M == 4:
        lo2, hi2, off2, sx2 = _row_terms(x_ptr, k, col, k_ok, 2, M, stride_xm, VEC, RUNS, MASK_K)
        lo3, hi3, off3, sx3 = _row_terms(x_ptr, k, col, k_ok, 3, M, stride_xm, VEC, RUNS, MASK_K)
    if ASM and BLOCK_M == 2:
        sums = tl.inline_asm_elementwise(
            asm=RUN_SUMS_2_ASM, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r" + ",r" * 32,
            args=[w, lo0[None, :], hi0[None, :], lo1[None, :], hi1[None, :]],
            dtype=tl.float32, is_pure=True, pack=8)
        d0, d1, _, _ = _first_of_runs(sums, BLOCK_N, RUNS)
    elif ASM:
        sums = tl.inline_asm_elementwise(
            asm=RUN_SUMS_4_ASM, constraints="=r,=r,=r,=r,=r,=r,=r,=r,r,r" + ",r" * 64,
            args=[w, lo0[None, :], hi0[None, :], lo1[None, :], hi1[None, :], lo2[None, :], hi2[None, :],
                  lo3[None, :], hi3[None, :]],
            dtype=tl.float32, is_pure=True, pack=8)
        d0, d1, d2, d3 = _first_of_runs(sums, BLOCK_N, RUNS)
    else:
        lo, hi = _nibbles_as_float32(w, False)
        d0 = _plain_run_sums(lo, hi, lo0, hi0, BLOCK_N, RUNS)
        d1 = _plain_run_sums(lo, hi, lo1, hi1, BLOCK_N, RUNS)
        if BLOCK_M == 4:
            d2 = _plain_run_sums(lo, hi, lo2, hi2, BLOCK_N, RUNS)
            d3 = _plain_run_sums(lo, hi, lo3, hi3, BLOCK_N, RUNS)
    if BLOCK_M == 4:
        acc2 += s * ((d2 - off2[None, :]) - z * sx2[None, :])
        acc3 += s * ((d3 - off3[None, :]) - z * sx3[None, :])
    acc0 += s * ((d0 - off0[None, :]) - z * sx0[None, :])
    acc1 += s * ((d1 - off1[None, :]) - z * sx1[None, :])
    return acc0, acc1, acc2, acc3


@triton.jit
def _int4_runs_rows_kernel(
    x_ptr, w_ptr, sz_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_wn: tl.constexpr, stride_szn: tl.constexpr,
    stride_om, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, EVEN_N: tl.constexpr, GROUP: tl.constexpr,
    ASM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr,
):
    """2-4 rows of x (``BLOCK_M`` 2 or 4; rows past ``M`` are computed, not stored) against a "runs"
    INT4 weight: the row kernel's tiles and steps, with one assembly block per run unpacking the
    nibbles once and chaining an FMA per row (``_run_sum_asm(rows)``), each row's sum in its own
    element of the run. Each x row and accumulator is its own 1-D/2-D
    tensor: a 3-D (rows, outputs, columns) tile put Triton's layouts through shared memory every
    step (sm_90 SASS: 22-77 barriers). Row strides are compile-time constants, and where ``BLOCK_K``
    does not divide K the whole steps run unmasked and one masked step finishes, as in the
    one-row kernel (sm_90 SASS of 4 rows, 4 x 2048 at down_proj's K = 13696: ``bench.sass``)."""
    VEC: tl.constexpr = 8
    KB: tl.constexpr = BLOCK_K // 2
    RUNS: tl.constexpr = KB // VEC
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    r = tl.arange(0, KB)
    rb = (r // VEC) * VEC + r % VEC
    col = (r // VEC) * (2 * VEC) + r % VEC
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + rb[None, :]
    sz_rows = sz_ptr + rn[:, None].to(tl.int64) * stride_szn
    runs = tl.arange(0, RUNS)
    wait_for_inputs(PDL)
    acc0 = tl.zeros((BLOCK_N, RUNS), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_N, RUNS), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_N, RUNS), dtype=tl.float32)
    acc3 = tl.zeros((BLOCK_N, RUNS), dtype=tl.float32)
    whole = (K // BLOCK_K) * BLOCK_K
    for k in range(0, whole, BLOCK_K):
        acc0, acc1, acc2, acc3 = _rows_step(acc0, acc1, acc2, acc3, x_ptr, w_ptrs, sz_rows, k, K, M, stride_xm, col,
                                            runs, n_ok, False, EVEN_N, GROUP, ASM, BLOCK_M, BLOCK_N, KB)
        w_ptrs += KB
    if not EVEN_K:
        acc0, acc1, acc2, acc3 = _rows_step(acc0, acc1, acc2, acc3, x_ptr, w_ptrs, sz_rows, whole, K, M, stride_xm,
                                            col, runs, n_ok, True, EVEN_N, GROUP, ASM, BLOCK_M, BLOCK_N, KB)
    _store_row(tl.sum(acc0, axis=1), rn, n_ok, bias_ptr, bias_ptr, out_ptr, False, HAS_BIAS)
    out_ptr += stride_om
    _store_row(tl.sum(acc1, axis=1), rn, n_ok & _row_ok(rn, M, 1), bias_ptr, bias_ptr, out_ptr, False, HAS_BIAS)
    if BLOCK_M == 4:
        out_ptr += stride_om
        _store_row(tl.sum(acc2, axis=1), rn, n_ok & _row_ok(rn, M, 2), bias_ptr, bias_ptr, out_ptr, False, HAS_BIAS)
        out_ptr += stride_om
        _store_row(tl.sum(acc3, axis=1), rn, n_ok & _row_ok(rn, M, 3), bias_ptr, bias_ptr, out_ptr, False, HAS_BIAS)


@triton.jit
def _int4_runs_dequant_kernel(
    w_ptr, sz_ptr, out_ptr, N, K, stride_wn, stride_szn, stride_on,
    GROUP: tl.constexpr, ASM: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """``(q - z) * s`` in the output's dtype for a ``BLOCK_N x BLOCK_K`` tile, as (rows, runs, 8)
    tensors so that each thread's 8 bytes, its run's scale and zero and its two 16-byte stores
    share one layout: the row kernel's unpacking, stores instead of products."""
    VEC: tl.constexpr = 8
    RUNS: tl.constexpr = BLOCK_K // (2 * VEC)
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    run = tl.program_id(1) * RUNS + tl.arange(0, RUNS)
    i = tl.arange(0, VEC)
    n3 = rn[:, None, None].to(tl.int64)
    ok = (rn < N)[:, None, None] & (run < K // (2 * VEC))[None, :, None]
    w = tl.load(w_ptr + n3 * stride_wn + run[None, :, None] * VEC + i[None, None, :], mask=ok, other=0)
    sz_ok = (rn < N)[:, None] & (run < K // (2 * VEC))[None, :]
    sz = _load_scales_zeros(sz_ptr + rn[:, None].to(tl.int64) * stride_szn + (run * (2 * VEC) // GROUP)[None, :],
                            sz_ok, ASM)
    s = (sz << 16).to(tl.float32, bitcast=True)
    z = (sz & -65536).to(tl.float32, bitcast=True)
    lo, hi = _dequantized_nibbles(w, s[:, :, None], z[:, :, None], ASM)
    out = out_ptr + n3 * stride_on + run[None, :, None] * (2 * VEC) + i[None, None, :]
    tl.store(out, lo.to(out_ptr.dtype.element_ty), mask=ok)
    tl.store(out + VEC, hi.to(out_ptr.dtype.element_ty), mask=ok)


def launch_int4_runs_row(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *,
    group_size: int, block_n: int = 4, block_k: int = 2048, num_warps: int = 4, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x (1, K) @ W.T (+ bias)`` for a "runs" weight ``packed`` ``[N, K/2]`` with ``scales_zeros``
    ``[N, K/group]`` (``pack_scales_zeros``), in ``x``'s dtype, into ``out`` (a contiguous ``(1, N)``)
    when given."""
    n, k = packed.shape[0], packed.shape[1] * 2
    if x.shape != (1, k) or k % RUN or group_size % RUN or block_k % RUN:
        raise ValueError(f"the INT4 row kernel takes one row of {k} columns in runs of {RUN}, not {tuple(x.shape)}")
    if block_k // 2 < num_warps * 32 * 8 and not INTERPRET:
        raise ValueError(f"BLOCK_K {block_k} with {num_warps} warps: each step must give every thread a run of 8 "
                         "bytes along K (narrower steps move x through shared memory every step)")
    out = torch.empty((1, n), dtype=x.dtype, device=x.device) if out is None else out
    pdl = launch_pdl(x.device)
    _int4_runs_row_kernel[(triton.cdiv(n, block_n),)](
        x, packed, scales_zeros, bias if bias is not None else out, out, n, k, packed.stride(0), scales_zeros.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, EVEN_N=n % block_n == 0, GROUP=group_size,
        ASM=not INTERPRET and x.device.type == "cuda", BLOCK_N=block_n, BLOCK_K=block_k, PDL=pdl,
        num_warps=num_warps, num_stages=1, launch_pdl=pdl,
    )
    return out


def launch_int4_runs_rows(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *,
    group_size: int, block_n: int = 4, block_k: int = 2048, num_warps: int = 4, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``launch_int4_runs_row`` for 2-4 rows of ``x`` (unit stride along K), unpacking each weight once."""
    rows, k = x.shape
    n = packed.shape[0]
    if not 2 <= rows <= 4 or k != packed.shape[1] * 2 or k % RUN or group_size % RUN or block_k % RUN:
        raise ValueError(f"the INT4 rows kernel takes 2-4 rows of {packed.shape[1] * 2} columns, not {tuple(x.shape)}")
    if block_k // 2 < num_warps * 32 * 8 and not INTERPRET:
        raise ValueError(f"BLOCK_K {block_k} with {num_warps} warps: each step must give every thread a run of 8 "
                         "bytes along K (narrower steps move x through shared memory every step)")
    out = torch.empty((rows, n), dtype=x.dtype, device=x.device) if out is None else out
    pdl = launch_pdl(x.device)
    _int4_runs_rows_kernel[(triton.cdiv(n, block_n),)](
        x, packed, scales_zeros, bias if bias is not None else out, out, rows, n, k, x.stride(0), packed.stride(0),
        scales_zeros.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % block_k == 0, EVEN_N=n % block_n == 0, GROUP=group_size,
        ASM=not INTERPRET and x.device.type == "cuda", BLOCK_M=2 if rows == 2 else 4, BLOCK_N=block_n,
        BLOCK_K=block_k, PDL=pdl, num_warps=num_warps, num_stages=1, launch_pdl=pdl,
    )
    return out


def launch_int4_runs_dequant(
    packed: torch.Tensor, scales_zeros: torch.Tensor, *, group_size: int, dtype: torch.dtype = torch.bfloat16,
    block_n: int = 16, block_k: int = 256,
) -> torch.Tensor:
    """The ``[N, K]`` weight in ``dtype`` from a "runs" weight (prompts and large decode batches).
    sm_90 SASS (Triton 3.6, 16 x 256 tiles): 184 instructions per thread for 32 values, 16-byte
    stores, no shared memory; not yet timed on a GPU."""
    n, k = packed.shape[0], packed.shape[1] * 2
    out = torch.empty((n, k), dtype=dtype, device=packed.device)
    grid = (triton.cdiv(n, block_n), triton.cdiv(k, block_k))
    _int4_runs_dequant_kernel[grid](
        packed, scales_zeros, out, n, k, packed.stride(0), scales_zeros.stride(0), out.stride(0),
        GROUP=group_size, ASM=not INTERPRET and packed.device.type == "cuda", BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4,
    )
    return out
