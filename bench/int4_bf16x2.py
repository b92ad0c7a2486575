"""Run 17's fourth Triton W4A16 form: nibbles unpacked and multiplied as bf16 pairs (inline PTX).

    python -m bench.int4_bf16x2 --out DIR                      # GPU (sm90): the form against tinygemm, M = 1
    TRITON_INTERPRET=1 python -m bench.int4_bf16x2 --check     # CPU: its layout and float32 twin agree with PyTorch

Kept to reproduce a negative result. The three forms of ``bench.gemv_sweep --int4`` ran the
unpacking and the products in float32, ~8-10 instructions per weight; this one is the Marlin-style
count, ~3.4 per weight (sm_90 SASS): its own layout, int32 words ``[N, K/8]`` with column
``8j+2k`` at bits ``4k`` and ``8j+2k+1`` at bits ``16+4k``, so that one ``lop3`` turns a nibble
pair into the bf16 pair ``128 + n`` matching x's bf16 pair; an ``fma.bf16x2`` removes the zero
point exactly (``-(128 + z)``, a packed constant per group), another multiplies by x and adds,
four pairs per word, and the word's two halves go to float32 once (one scale multiply per word).
The bf16 partial sums cost ~0.3 % relative error (under 3 % of INT4's own).

Measured (H200, run 17, this kernel and lab variants of it: x as one split 16-byte load, the next
tile prefetched; ``docs/bench-results/lab_row_kernels.run17*.h200.json``, CUDA graph of 100 calls
over weight copies L2 cannot hold): best 8.9 / 7.1 / 36.8 us on q/k/v, o_proj, gate_up against
tinygemm's 8.8 / 6.9 / 31.3 in the same runs. Fewer instructions did not make it faster: with 4
bytes of weight per thread per step it waits on memory, and longer steps cost registers and
shared-memory layout conversions. tinygemm stays.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

import torch
import triton
import triton.language as tl

from bench.common import parser, write_result
from bench.gemv_sweep import GROUP, copies, quantized, sweep

SHAPES = {"qkv": (4608, 4096), "o_proj": (4096, 4096), "gate_up": (27392, 4096)}
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


@triton.jit
def _word_sums_bf16x2(w, x0, x1, x2, x3, c):
    """sum over a word's 8 columns of (n - z) * x, bf16 pairs, both halves added in float32."""
    return tl.inline_asm_elementwise(
        asm="""{
        .reg .b32 t, v, d, a, one, lo, hi;
        mov.b32 one, 0x3F803F80;
        lop3.b32 v, $1, 0x000F000F, 0x43004300, 0xEA;
        fma.rn.bf16x2 d, v, one, $6;
        mul.rn.bf16x2 a, d, $2;
        shr.u32 t, $1, 4;
        lop3.b32 v, t, 0x000F000F, 0x43004300, 0xEA;
        fma.rn.bf16x2 d, v, one, $6;
        fma.rn.bf16x2 a, d, $3, a;
        shr.u32 t, $1, 8;
        lop3.b32 v, t, 0x000F000F, 0x43004300, 0xEA;
        fma.rn.bf16x2 d, v, one, $6;
        fma.rn.bf16x2 a, d, $4, a;
        shr.u32 t, $1, 12;
        lop3.b32 v, t, 0x000F000F, 0x43004300, 0xEA;
        fma.rn.bf16x2 d, v, one, $6;
        fma.rn.bf16x2 a, d, $5, a;
        shl.b32 lo, a, 16;
        and.b32 hi, a, 0xFFFF0000;
        add.f32 $0, lo, hi;
        }""",
        constraints="=r,r,r,r,r,r,r", args=[w, x0, x1, x2, x3, c], dtype=tl.float32, is_pure=True, pack=1)


@triton.jit
def _word_sums_f32(w, x0, x1, x2, x3, c):
    """The same sums in float32 (the interpreter's path): bf16 bits widened, exact products."""
    cf = (c << 16).to(tl.float32, bitcast=True)  # -(128 + z)
    t = tl.zeros(w.shape, dtype=tl.float32)
    for k in tl.static_range(4):
        xs = x0 if k == 0 else x1 if k == 1 else x2 if k == 2 else x3
        v = w >> (4 * k)
        lo = (((v & 15) | 0x4300) << 16).to(tl.float32, bitcast=True)  # 128 + n
        hi = ((((v >> 16) & 15) | 0x4300) << 16).to(tl.float32, bitcast=True)
        t += (lo + cf) * (xs << 16).to(tl.float32, bitcast=True) + (hi + cf) * (xs & -65536).to(tl.float32, bitcast=True)
    return t


@triton.jit
def gemv_int4_bf16x2(x_ptr, w_ptr, s_ptr, c_ptr, o_ptr, N, K, stride_wn, stride_sn,
                     GROUP: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr, ASM: tl.constexpr):
    """One row: ``(BLOCK_N, BLOCK_W)`` words per step, one word per thread per row (x as four
    strided int32 bf16 pairs), one scale per word."""
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    rw = tl.arange(0, BLOCK_W)
    WPG: tl.constexpr = GROUP // 8
    x32 = x_ptr.to(tl.pointer_type(tl.int32))
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + rw[None, :]
    acc = tl.zeros((BLOCK_N, BLOCK_W), dtype=tl.float32)
    for kw in range(0, K // 8, BLOCK_W):
        xb = x32 + (kw + rw) * 4
        x0 = tl.load(xb)[None, :]
        x1 = tl.load(xb + 1)[None, :]
        x2 = tl.load(xb + 2)[None, :]
        x3 = tl.load(xb + 3)[None, :]
        w = tl.load(w_ptrs, eviction_policy="evict_first")
        sz = rn[:, None] * stride_sn + ((kw + rw) // WPG)[None, :]
        s = tl.load(s_ptr + sz).to(tl.float32)
        c = tl.load(c_ptr + sz)
        if ASM:
            part = _word_sums_bf16x2(w, x0, x1, x2, x3, c)
        else:
            part = _word_sums_f32(w, x0, x1, x2, x3, c)
        acc += part * s
        w_ptrs += BLOCK_W
    tl.store(o_ptr + rn, tl.sum(acc, axis=1).to(o_ptr.dtype.element_ty))


def pack_words(q: torch.Tensor) -> torch.Tensor:
    """q ``[N, K]`` (0..15) -> int32 ``[N, K/8]``: column 8j+2k at bits 4k, 8j+2k+1 at bits 16+4k."""
    n, k = q.shape
    q = q.to(torch.int64).view(n, k // 8, 8)
    word = torch.zeros(n, k // 8, dtype=torch.int64, device=q.device)
    for pair in range(4):
        word |= (q[..., 2 * pair] << (4 * pair)) | (q[..., 2 * pair + 1] << (16 + 4 * pair))
    return torch.where(word >= 2**31, word - 2**32, word).to(torch.int32).contiguous()


def pack_zero_pairs(zeros: torch.Tensor) -> torch.Tensor:
    """bf16 ``-(128 + z)`` in both halves of an int32, per (row, group)."""
    bits = (-(128.0 + zeros.float())).to(torch.bfloat16).view(torch.int16).to(torch.int32) & 0xFFFF
    return (bits | (bits << 16)).contiguous()


def run(x: torch.Tensor, words: torch.Tensor, scales: torch.Tensor, pairs: torch.Tensor, cfg: tuple[int, int, int]) -> torch.Tensor:
    block_n, block_w, warps = cfg
    n, k = words.shape[0], words.shape[1] * 8
    out = torch.empty((1, n), dtype=x.dtype, device=x.device)
    gemv_int4_bf16x2[(triton.cdiv(n, block_n),)](x, words, scales, pairs, out, n, k, words.stride(0), scales.stride(0),
                                                 GROUP=GROUP, BLOCK_N=block_n, BLOCK_W=block_w,
                                                 ASM=not INTERPRET and x.is_cuda, num_warps=warps, num_stages=1)
    return out


CONFIGS = list(itertools.product((4, 8, 16), (64, 128, 256), (4, 8)))  # rows, words per step, warps


def check() -> None:
    """The form against glmkb's dequantized weight (CPU under TRITON_INTERPRET=1, or CUDA)."""
    from llm.quantization import _dequantize

    device = "cuda" if torch.cuda.is_available() else "cpu"
    for n, k in ((32, 512), (48, 1024)):
        q, s, z = quantized(n, k, device="cpu", packed=False)
        x = torch.randn(1, k).to(torch.bfloat16)
        ref = x.float() @ _dequantize(q, s, z, group_size=GROUP, dtype=torch.float32).T
        buffers = [t.to(device) for t in (pack_words(q), s, pack_zero_pairs(z))]
        for cfg in ((16, 32, 4), (8, 64, 4)):
            y = run(x.to(device), *buffers, cfg).float().cpu()
            assert float((y - ref).norm() / ref.norm()) < 0.01, (n, k, cfg)
    print("the bf16x2 INT4 form agrees with the dequantized weight (< 1 % relative)")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="only check the form's results")
    args = p.parse_args()
    if args.check or not torch.cuda.is_available():
        check()
        return
    from bench.gemv import copy_bandwidth, nbytes
    from llm import int4_tinygemm as tinygemm

    bandwidth = copy_bandwidth("cuda")
    result: dict[str, Any] = {"copy_bandwidth": bandwidth, "shapes": {}}
    for name, (n, k) in SHAPES.items():
        q, s, z = quantized(n, k, device="cuda", packed=False)
        x = torch.randn(1, k, device="cuda", dtype=torch.bfloat16)
        ours = (pack_words(q), s, pack_zero_pairs(z))
        theirs = (tinygemm.pack_weight(q, inner_tiles=tinygemm.inner_k_tiles(k)),
                  tinygemm.scales_and_zeros(s, z, dtype=torch.bfloat16))
        size = nbytes(*ours)
        mine, ref = copies(ours, size), copies(theirs, size)
        options = {"tinygemm": lambda i: tinygemm.int4pack_mm(x, ref[i % len(ref)][0], GROUP, ref[i % len(ref)][1])}
        options |= {f"n{c[0]}w{c[1]}x{c[2]}": (lambda i, c=c: run(x, *mine[i % len(mine)], c)) for c in CONFIGS}
        result["shapes"][name] = sweep(f"{name} int4 bf16x2", options, nbytes=size, bandwidth=bandwidth)
        write_result(args.out, "int4_bf16x2", result)


if __name__ == "__main__":
    main()
