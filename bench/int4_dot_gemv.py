"""A probe, not a kernel of the decode step: the one-row INT4 GEMV on the tensor cores (x padded to 16 rows).

    python -m bench.row_tiles --kinds int4 int4dot --out DIR   # GPU: time it against the row kernel
    PYTHONPATH=/tmp/tr36 python -m bench.sass                  # sm_90 SASS figures, no GPU needed

Why. glmkb's INT4 row kernel (``llm.kernels.int4_gemv``) spends 3.09 sm_90 instructions per weight
(Triton 3.6, the pinned 16 x 2048 tile), 2.4 of them unpacking nibbles to float32 and one FMA
each; gate_up reads 2.9 TB/s where the INT8 kernel reads 3.9, so INT4 stops at 1.78x bf16 (target
2.2x). On the tensor cores the products cost nothing per weight: what is left is building bf16
operands. Each byte's nibbles become ``128 + n`` in bf16 by bit operations alone (``0x4300 | n``):
a ``prmt`` puts two bytes 16 bits apart and two ``lop3`` (with a shift between) give both nibbles
of both bytes, 4 instructions per 4 weights. The dots of a step (``BLOCK_K`` = the group) are
exact products summed in float32, and the offsets come off once per row and step as in the row
kernel: ``s (sum((128 + n) x) - (128 + z) sum x)``. The ``runs`` layout is used unchanged: low
nibbles against x's columns ``16 r + i``, high nibbles against ``16 r + 8 + i`` (``int4_gemm``'s
two dots).

sm_90 SASS (Triton 3.6, session 16): 2.19 instructions per weight at 256 x 128 with 8 warps, 2.38 at
128 x 128 with 4 warps, 3.05 at 64 x 128 (wgmma needs 64 rows per warp group). But the packed
tile goes through shared memory every step (a layout change into the wgmma register operand:
8-12 barriers per step), and with 256 rows per program gate_up has 107 programs for 132 SMs, so
``SPLIT_K`` programs share each tile's K (float32 atomics into a zeroed output). Whether fewer
instructions beat the row kernel's many programs with no barriers is for the GPU to say; this file
exists to say it in one call.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm.int4_runs import RUN

# Four bytes' worth of work in two: bytes 0 and 1 of $2 -> $0 = bf16 (128 + low nibble of each),
# $1 = bf16 (128 + high nibble of each), element 0 in the low half (Triton's packing of pairs).
UNPACK_2 = tl.constexpr("""{ .reg .b32 a;
prmt.b32 a, $2, 0, 0x7170;
lop3.b32 $0, a, 0x000F000F, 0x43004300, 0xEA;
shr.u32 a, a, 4;
lop3.b32 $1, a, 0x000F000F, 0x43004300, 0xEA; }""")

TILES = ((256, 128, 8, 1), (256, 128, 8, 2), (128, 128, 4, 1), (128, 128, 4, 2), (128, 128, 8, 4),
         (64, 128, 4, 4))  # (BLOCK_N, BLOCK_K, num_warps, SPLIT_K), group 128


@triton.jit
def _bf16_nibbles(w, ASM: tl.constexpr):
    """A uint8 tile as two bf16 tiles: ``128 + low nibble`` and ``128 + high nibble`` (exact)."""
    if ASM:
        lo, hi = tl.inline_asm_elementwise(asm=UNPACK_2, constraints="=r,=r,r", args=[w],
                                           dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=2)
    else:
        b = w.to(tl.int32) & 0xFF  # the same bits as the assembly (the interpreter's int -> bf16 cast is wrong)
        lo = ((b & 15) | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
        hi = ((b >> 4) | 0x4300).to(tl.int16).to(tl.bfloat16, bitcast=True)
    return lo, hi


@triton.jit
def _int4_dot_gemv_kernel(
    x_ptr, w_ptr, sz_ptr, out_ptr, K, stride_wn: tl.constexpr, stride_szn: tl.constexpr, GROUP: tl.constexpr,
    ASM: tl.constexpr, DOT_F32: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
):
    """``out (float32, zeroed) += x (1, K) @ W.T`` over ``BLOCK_N`` rows and this program's share of
    K's steps. ``DOT_F32``: float32 IEEE dots (Triton's interpreter, whose bf16 ``tl.dot`` is wrong)."""
    VEC: tl.constexpr = 8
    KB: tl.constexpr = BLOCK_K // 2
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    r = tl.arange(0, KB)
    col = (r // VEC) * (2 * VEC) + r % VEC  # byte r's low-nibble column; its high nibble's is col + 8
    rm = tl.arange(0, 16)
    real = (rm < 1)[:, None]  # x's one row, padded to the 16 a dot takes
    steps = K // BLOCK_K
    per_split = tl.cdiv(steps, SPLIT_K)
    first = tl.program_id(1) * per_split
    last = tl.minimum(first + per_split, steps)
    w_ptrs = w_ptr + rn[:, None].to(tl.int64) * stride_wn + r[None, :] + first * KB
    sz_ptrs = sz_ptr + rn.to(tl.int64) * stride_szn
    dtype: tl.constexpr = tl.float32 if DOT_F32 else tl.bfloat16
    acc = tl.zeros((BLOCK_N, 16), dtype=tl.float32)
    for step in range(first, last):
        k = step * BLOCK_K
        x_lo = tl.load(x_ptr + k + col[None, :] + rm[:, None] * 0, mask=real, other=0.0)
        x_hi = tl.load(x_ptr + k + VEC + col[None, :] + rm[:, None] * 0, mask=real, other=0.0)
        w = tl.load(w_ptrs, eviction_policy="evict_first")
        sz = tl.load(sz_ptrs + k // GROUP)
        lo, hi = _bf16_nibbles(w, ASM)
        if DOT_F32:
            part = tl.dot(lo.to(dtype), tl.trans(x_lo.to(dtype)), input_precision="ieee")
            part = tl.dot(hi.to(dtype), tl.trans(x_hi.to(dtype)), part, input_precision="ieee")
        else:
            part = tl.dot(lo, tl.trans(x_lo))
            part = tl.dot(hi, tl.trans(x_hi), part)
        sx = tl.sum(x_lo.to(tl.float32) + x_hi.to(tl.float32), axis=1)
        s = (sz << 16).to(tl.float32, bitcast=True)
        z = (sz & -65536).to(tl.float32, bitcast=True)
        acc += s[:, None] * (part - (z + 128.0)[:, None] * sx[None, :])
        w_ptrs += KB
    y = tl.sum(tl.where((rm < 1)[None, :], acc, 0.0), axis=1)  # column 0: x's row
    if SPLIT_K == 1:
        tl.store(out_ptr + rn, y)
    else:
        tl.atomic_add(out_ptr + rn, y, sem="relaxed")


def launch_int4_dot_gemv(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, *, group_size: int, block_n: int = 256,
    block_k: int = 128, num_warps: int = 8, split_k: int = 1, out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x (1, K) @ W.T`` in float32 (``out``, zeroed here) for a "runs" weight: the probe's launch.
    Needs N a multiple of ``block_n`` and ``block_k`` dividing the group (one scale per step)."""
    n, k = packed.shape[0], packed.shape[1] * 2
    if x.shape != (1, k) or n % block_n or group_size % block_k or block_k % (2 * RUN) or k % group_size:
        raise ValueError(f"the probe takes one row of {k} columns, N % {block_n} == 0 and BLOCK_K dividing "
                         f"the group {group_size}, not x {tuple(x.shape)} with N {n}")
    out = torch.empty((1, n), dtype=torch.float32, device=x.device) if out is None else out
    out.zero_()
    cuda = x.device.type == "cuda"
    _int4_dot_gemv_kernel[(n // block_n, split_k)](
        x, packed, scales_zeros, out, k, packed.stride(0), scales_zeros.stride(0), GROUP=group_size,
        ASM=cuda, DOT_F32=not cuda or x.dtype == torch.float32, BLOCK_N=block_n, BLOCK_K=block_k,
        SPLIT_K=split_k, num_warps=num_warps, num_stages=1,
    )
    return out
