"""Run 15's one-row GEMV sweeps (H200): the tiles behind ``gemv_configs.TUNED``, and Triton INT4.

    python -m bench.gemv_sweep --out DIR            # bf16 + INT8 tiles of llm.kernels, every 6B shape
    python -m bench.gemv_sweep --int4 pairs --out DIR  # a Triton W4A16 form (pairs | group), M = 1 and 4
    TRITON_INTERPRET=1 python -m bench.gemv_sweep --check   # CPU: the INT4 kernels agree with PyTorch

bf16 and INT8 time ``llm.kernels.gemv.launch_gemv`` over a grid of one-row tiles (2-16 output
rows, 0.5-8 K elements per step, 4 or 8 warps, 1 or 2 stages) against cuBLAS. In run 15 the
grid ran on an experimental copy of the row kernel (now ``_gemv_row_kernel``), first with int8
converted by I2F and then through float bits (``gemv_sweep_run15.h200.json``,
``gemv_sweep_run15_int8magic.h200.json``).

The INT4 kernels read glmkb's own layout (uint8 ``[N, K/2]``, byte j = columns 2j (low nibble)
and 2j+1; scales and zero points ``[N, K/group]``) and did NOT beat torch's tinygemm, kept to
reproduce that: ``pairs`` (tiles of 1-8 groups, x read as int32 pairs, nibbles through float
bits; 0.23-0.35 of copy bandwidth, ``gemv_sweep_run15_int4triton.h200.json``; a first form
with strided x loads and I2F conversion read 0.09-0.30, in ``gemv_sweep_run15.h200.json``),
``group`` (one group per step, reduced per step, rows of M in one program; 0.1,
``gemv_sweep_run15_int4c.h200.json``). Every call is timed as a CUDA graph of 100 calls over
weight copies L2 cannot hold (``bench.gemv.time_calls``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from bench.common import parser, write_result

SHAPES = {"qkv": (4608, 4096), "o_proj": (4096, 4096), "gate_up": (27392, 4096), "down": (4096, 13696),
          "lm_head": (65024, 4096)}
GROUP = 128


@triton.jit
def gemv_int4b(x_ptr, w_ptr, s_ptr, z_ptr, o_ptr, N, NG, stride_wn, stride_sn,
               EVEN_G: tl.constexpr, GROUP: tl.constexpr, BLOCK_N: tl.constexpr, GROUPS: tl.constexpr):
    """x_ptr: the bf16 row viewed as int32 pairs (x[2j] low half, x[2j+1] high half)."""
    HALF: tl.constexpr = GROUP // 2
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rg = tl.arange(0, GROUPS)
    rj = tl.arange(0, HALF)
    byte_off = rg[:, None] * HALF + rj[None, :]
    w_ptrs = w_ptr + rn[:, None, None].to(tl.int64) * stride_wn + byte_off[None, :, :]
    acc = tl.zeros((BLOCK_N, GROUPS, HALF), dtype=tl.float32)
    accz = tl.zeros((BLOCK_N, GROUPS), dtype=tl.float32)
    for g0 in range(0, NG, GROUPS):
        if EVEN_G:
            xp = tl.load(x_ptr + g0 * HALF + byte_off, eviction_policy="evict_last")
            b = tl.load(w_ptrs, mask=n_ok[:, None, None], other=0, eviction_policy="evict_first")
            s = tl.load(s_ptr + rn[:, None] * stride_sn + g0 + rg[None, :], mask=n_ok[:, None], other=0.0)
            z = tl.load(z_ptr + rn[:, None] * stride_sn + g0 + rg[None, :], mask=n_ok[:, None], other=0.0)
        else:
            g_ok = (g0 + rg) < NG
            xp = tl.load(x_ptr + g0 * HALF + byte_off, mask=g_ok[:, None], other=0, eviction_policy="evict_last")
            b = tl.load(w_ptrs, mask=n_ok[:, None, None] & g_ok[None, :, None], other=0,
                        eviction_policy="evict_first")
            sz_ok = n_ok[:, None] & g_ok[None, :]
            s = tl.load(s_ptr + rn[:, None] * stride_sn + g0 + rg[None, :], mask=sz_ok, other=0.0)
            z = tl.load(z_ptr + rn[:, None] * stride_sn + g0 + rg[None, :], mask=sz_ok, other=0.0)
        xe = (xp << 16).to(tl.float32, bitcast=True)
        xo = (xp & -65536).to(tl.float32, bitcast=True)
        bi = b.to(tl.int32)
        lo = ((bi & 15) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        hi = ((bi >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0
        s = s.to(tl.float32)
        acc += (lo * xe[None, :, :] + hi * xo[None, :, :]) * s[:, :, None]
        accz += s * z.to(tl.float32) * tl.sum(xe + xo, axis=1)[None, :]
        w_ptrs += GROUPS * HALF
    y = tl.sum(tl.sum(acc, axis=2) - accz, axis=1)
    tl.store(o_ptr + rn, y.to(o_ptr.dtype.element_ty), mask=n_ok)



@triton.jit
def gemv_int4c(x_ptr, w_ptr, s_ptr, z_ptr, o_ptr, M, N, NG, stride_xm, stride_wn, stride_sn, stride_om,
               GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """One group per step: a [BLOCK_N, GROUP/2] byte tile; the zero point folded into the float-bits
    offset, the per-group sum reduced in the step and scaled once per (row, group).
    x_ptr: bf16 rows viewed as int32 pairs."""
    HALF: tl.constexpr = GROUP // 2
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = rn < N
    rj = tl.arange(0, HALF)
    rm = tl.arange(0, BLOCK_M)
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + rj[None, :]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for g in range(NG):
        b = tl.load(w_ptrs, mask=n_ok[:, None], other=0, eviction_policy="evict_first").to(tl.int32)
        s = tl.load(s_ptr + rn * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32)
        zz = tl.load(z_ptr + rn * stride_sn + g, mask=n_ok, other=0.0).to(tl.float32) + 8388608.0
        lo = ((b & 15) | 0x4B000000).to(tl.float32, bitcast=True) - zz[:, None]
        hi = ((b >> 4) | 0x4B000000).to(tl.float32, bitcast=True) - zz[:, None]
        for m in tl.static_range(BLOCK_M):
            xp = tl.load(x_ptr + m * stride_xm + g * HALF + rj, mask=tl.full([HALF], m, tl.int32) < M, other=0,
                         eviction_policy="evict_last")
            xe = (xp << 16).to(tl.float32, bitcast=True)
            xo = (xp & -65536).to(tl.float32, bitcast=True)
            r = tl.sum(lo * xe[None, :] + hi * xo[None, :], axis=1) * s
            acc += tl.where(rm[:, None] == m, r[None, :], 0.0)
        w_ptrs += HALF
    tl.store(o_ptr + rm[:, None] * stride_om + rn[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & n_ok[None, :])



def int4_pairs(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, cfg: tuple[int, ...]) -> torch.Tensor:
    """``gemv_int4b`` for one row; ``cfg`` = (rows per program, groups per step, warps)."""
    n, ng = w.shape[0], w.shape[1] * 2 // GROUP
    block_n, groups, warps = cfg
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    gemv_int4b[(triton.cdiv(n, block_n),)](x.view(torch.int32), w, s, z, out, n, ng, w.stride(0), s.stride(0),
                                           EVEN_G=ng % groups == 0, GROUP=GROUP, BLOCK_N=block_n, GROUPS=groups,
                                           num_warps=warps, num_stages=1)
    return out


def int4_group(x: torch.Tensor, w: torch.Tensor, s: torch.Tensor, z: torch.Tensor, cfg: tuple[int, ...]) -> torch.Tensor:
    """``gemv_int4c`` for M rows; ``cfg`` = (rows per program, warps)."""
    m, n = x.shape[0], w.shape[0]
    block_n, warps = cfg
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    xi = x.view(torch.int32)
    gemv_int4c[(triton.cdiv(n, block_n),)](xi, w, s, z, out, m, n, w.shape[1] * 2 // GROUP, xi.stride(0),
                                           w.stride(0), s.stride(0), out.stride(0), GROUP=GROUP,
                                           BLOCK_M=triton.next_power_of_2(m), BLOCK_N=block_n, num_warps=warps,
                                           num_stages=1)
    return out


INT4_FORMS: dict[str, tuple[Callable[..., torch.Tensor], list[tuple[int, ...]], tuple[int, ...]]] = {
    # name -> (kernel call, configs, row counts)
    "pairs": (int4_pairs, [c for c in itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8), (2, 4, 8))
                           if 2 <= c[0] * c[1] * 64 / (32 * c[2]) <= 128], (1,)),
    "group": (int4_group, [c for c in itertools.product((4, 8, 16, 32, 64), (2, 4, 8))
                           if 2 <= c[0] * 64 / (32 * c[1]) <= 64], (1, 4)),
}


def row_tiles(k: int, *, int8: bool) -> list[Any]:
    """The one-row tile grid: accumulator registers per thread between 4 and 64 (128 for int8)."""
    from llm.kernels.gemv_configs import GemvConfig

    tiles = []
    for block_n, block_k, warps, stages in itertools.product((1, 2, 4, 8, 16), (512, 1024, 2048, 4096, 8192),
                                                              (4, 8), (1, 2)):
        regs = block_n * block_k / (32 * warps)
        if block_k <= 2 * triton.next_power_of_2(k) and 4 <= regs <= (128 if int8 else 64):
            tiles.append(GemvConfig(block_n, block_k, num_warps=warps, num_stages=stages))
    return tiles


def sweep(label: str, options: dict[str, Callable[[int], Any]], *, nbytes: int, bandwidth: float) -> dict[str, Any]:
    """Time every option (name -> ``call(i)``), print the five fastest with their share of copy bandwidth."""
    from bench.gemv import time_calls

    times: dict[str, Any] = {}
    for name, call in options.items():
        try:
            times[name] = time_calls(call, device="cuda") * 1e6
        except Exception as e:  # noqa: BLE001 (a tile the GPU cannot run: reported, the others go on)
            times[name] = f"{type(e).__name__}: {e}"[:120]
    ok = sorted((t, name) for name, t in times.items() if isinstance(t, float))
    print(f"{label}: " + "  ".join(f"{name} {t:.1f}us/{nbytes / (t * 1e-6) / bandwidth:.2f}" for t, name in ok[:5]),
          flush=True)
    return times


def copies(one: Any, nbytes: int) -> list[Any]:
    from bench.gemv import copies_for

    clone = (lambda t: tuple(x.clone() for x in t)) if isinstance(one, tuple) else (lambda t: t.clone())
    return [one] + [clone(one) for _ in range(copies_for(nbytes) - 1)]


def sweep_float_and_int8(*, n: int, k: int, name: str, bandwidth: float) -> dict[str, Any]:
    x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
    # the LM head too: glmkb's INT8 and INT4 models hold it in INT8 (run 17)
    return {"bf16": sweep_bf16(x, n, k, name=name, bandwidth=bandwidth),
            "int8": sweep_int8(x, n, k, name=name, bandwidth=bandwidth)}


def sweep_bf16(x: torch.Tensor, n: int, k: int, *, name: str, bandwidth: float) -> dict[str, Any]:
    from llm.kernels.gemv import launch_gemv

    weights = copies(torch.randn(n, k, device="cuda", dtype=torch.bfloat16) * 0.02, n * k * 2)
    options = {"cuBLAS": lambda i: F.linear(x, weights[i % len(weights)])}
    options |= {str(c): (lambda i, c=c: launch_gemv(x, weights[i % len(weights)], None, None, c))
                for c in row_tiles(k, int8=False)}
    return sweep(f"{name} bf16", options, nbytes=n * k * 2, bandwidth=bandwidth)


def sweep_int8(x: torch.Tensor, n: int, k: int, *, name: str, bandwidth: float) -> dict[str, Any]:
    from llm.kernels.gemv import launch_gemv

    weights = copies(torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda"), n * k)
    scales = torch.rand(n, device="cuda", dtype=torch.bfloat16)
    options = {str(c): (lambda i, c=c: launch_gemv(x, weights[i % len(weights)], scales, None, c))
               for c in row_tiles(k, int8=True)}
    return sweep(f"{name} int8", options, nbytes=n * k + n * 2, bandwidth=bandwidth)


def quantized(n: int, k: int, *, device: str, packed: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random ``(n, k)`` weight in glmkb's INT4: ``(q, scales, zeros)``, q packed two per byte
    (``packed``) or one value per byte; bf16 scales and zeros."""
    from llm.quantization import pack_int4, quantize_int4

    q, s, z = quantize_int4(torch.randn(n, k, device=device) * 0.02, group_size=GROUP)
    return pack_int4(q) if packed else q, s.to(torch.bfloat16).contiguous(), z.to(torch.bfloat16).contiguous()


def sweep_int4(*, form: str, n: int, k: int, name: str, bandwidth: float) -> dict[str, Any]:
    kernel, configs, row_counts = INT4_FORMS[form]
    one = quantized(n, k, device="cuda")
    nbytes = n * k // 2 + 2 * one[1].numel() * 2
    weights = copies(one, nbytes)
    result = {}
    for rows in row_counts:
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        options = {str(c): (lambda i, c=c, x=x: kernel(x, *weights[i % len(weights)], c)) for c in configs}
        result[f"m{rows}"] = sweep(f"{name} int4 {form} M={rows}", options, nbytes=nbytes, bandwidth=bandwidth)
    torch.cuda.empty_cache()
    return result


def check() -> None:
    """The INT4 kernels against glmkb's dequantized weight (CPU under TRITON_INTERPRET=1, or CUDA)."""
    from llm.quantization import _dequantize, pack_int4, quantize_int4

    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    for rows, n, k in ((1, 48, 512), (1, 40, 640), (3, 40, 640)):
        x = torch.randn(rows, k).to(torch.bfloat16)
        q, s, z = quantize_int4(torch.randn(n, k), group_size=GROUP)
        ref = x.float() @ _dequantize(q, s, z, group_size=GROUP, dtype=torch.float32).T
        buffers = [t.to(device) for t in (pack_int4(q), s.to(torch.bfloat16), z.to(torch.bfloat16))]
        for form, (kernel, configs, row_counts) in INT4_FORMS.items():
            if rows not in row_counts:
                continue
            for cfg in configs[:3]:
                error = float((kernel(x.to(device), *buffers, cfg).float().cpu() - ref).abs().max())
                assert error < 0.01 * float(ref.abs().max()), (form, rows, n, k, cfg, error)
    print("int4 kernels agree with the dequantized weight (bf16 scales: < 1 % of the largest output)")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--int4", choices=sorted(INT4_FORMS), help="sweep this Triton INT4 form instead")
    p.add_argument("--check", action="store_true", help="only check the INT4 kernels' results")
    args = p.parse_args()
    if args.check or not torch.cuda.is_available():
        check()
        return
    from bench.gemv import copy_bandwidth

    bandwidth = copy_bandwidth("cuda")
    result: dict[str, Any] = {"copy_bandwidth": bandwidth, "int4_form": args.int4, "shapes": {}}
    for name, (n, k) in SHAPES.items():
        if args.int4 and name == "lm_head":
            continue
        run = sweep_int4 if args.int4 else sweep_float_and_int8
        kwargs = {"form": args.int4} if args.int4 else {}
        result["shapes"][name] = run(n=n, k=k, name=name, bandwidth=bandwidth, **kwargs)
        write_result(args.out, f"gemv_sweep{'_int4-' + args.int4 if args.int4 else ''}", result)


if __name__ == "__main__":
    main()
