"""A probe, not a kernel of the decode step: the one-row INT4 GEMV on ``mma.sync``, fed from registers.

    python -m bench.row_tiles --kinds int4mma --out DIR              # GPU: against the row kernel's op
    python -m bench.row_tiles --kinds int4mma --resident --out DIR   # the same with the weight in L2
    PYTHONPATH=/tmp/tr36 python -m bench.sass                        # sm_90 SASS figures, no GPU needed

Why. glmkb's INT4 row kernel (``llm.kernels.int4_gemv``) spends 3.09 sm_90 instructions per weight and
is bound by them, not by bytes: on an H100 it is as fast with its weight resident in L2 as from memory
(gate_up's first half 12.3-12.8 us either way, run 31), and the H200's 1.4x bandwidth gave it 9 %
(486.7 -> 532.3 tok/s, run 22) where bf16 gained 32 %: INT4 makes 2.21x bf16 on an H100 and 1.79x on
the H200 (target 2.2x). The ``tl.dot`` probe (``bench.int4_dot_gemv``) cut the instructions but paid a
shared-memory round trip and barriers every step (1.5-2.6x slower, run 22). Here each thread's weight
bytes *are* its A fragments of ``mma.sync.m16n8k16`` (16 rows x 16 columns of K, bf16, float32 sums):
the layout is written so that the thread a plain blocked load hands a byte to is the thread whose
fragment holds it, and x, loaded the same way, fills every column of B (every column of the result is
the product; lane ``4g`` keeps rows g and g+8). Per ``mma`` (8 weights a thread): 3 shifts, 4 ``lop3``
(``0x4300 | n``: the bf16 ``128 + n``, two nibbles at once), 4 bf16x2 FMAs (``- (128 + z)``: exact for
``|z| <= 128``, since ``n - z`` is a small integer) and the ``mma``: 1.5 instructions per weight before
loads and addresses (2.2 in the sm_90 loop, `bench.sass`), against 3.09. The scale multiplies each 64-column
chunk's float32 sum once (one group per chunk: ``group_size`` a multiple of 64).

Measured (run 31, an H100): the layout is right (``test_cuda_mma_probe_*``); with the weight in L2 the
probe beats the row kernel's op by 22 % on gate_up's shape (9.7 vs 12.3 us for 13696 x 4096) and 20 % on
down's, and ties on q/k/v and o_proj; from memory it ties on gate_up (23.3 vs 23.1 us) and loses 15-25 %
on the small shapes, where its loads (the same kernel with the arithmetic taken out, ``mode=2``) are
already as slow as the row kernel with its arithmetic. So on a card with more bandwidth per instruction
(the H200) it may win; only a run there can say. docs/PERFORMANCE.md, "Run 31".

Layout (``pack``). Rows in blocks of 16, K in chunks of 64; per (block, chunk) 512 bytes: ``[lane][h][8]``
(16 bytes a lane: one 16-byte load) for the chunk's two halves ``h`` of 32 columns. Lane ``l`` (``g = l
>> 2``, ``c = l & 3``) holds, per half, two ``mma`` words ``m``; word ``m`` packs rows ``g`` and ``g + 8``
at columns ``32 h + 8 c + 4 m + (0, 2, 1, 3)``, one byte per column: row ``g`` in the low nibble, row ``g
+ 8`` in the high. Shifting the word by 0, 4, 8, 12 and masking ``0x000F000F`` gives A's four registers
(``a0``: row g, columns t0 t1; ``a1``: row g+8, t0 t1; ``a2``: row g, t2 t3; ``a3``: row g+8, t2 t3).
x's columns ``32 h + 8 c + 4 m + (0..3)`` are B's ``k = 2c, 2c+1, 2c+8, 2c+9``: a permutation of the
chunk's 64 columns, the same on both sides, so the sum is unchanged. Scales and zeros: one int32 per
(group, row) as ``[groups, N]``, bf16 ``s`` low and the bf16 ``-(128 + z)`` high.

Triton's layouts. The assembly's 8 elements a thread must be one unit's, in order. Tiles are ``[lane,
warp, 4, half, chain, chunk]``; Triton 3.6 orders axes of equal contiguity first to last, so the loads'
layouts (4 contiguous int32 of x along axis 2; 2 int64 of weight along the halves) and the plain one the
scale loads and the sums get (one element a thread per axis) number a thread's registers alike: axis 2,
then the halves, chains, chunks. (``[chain, half, warp, lane, 8]`` put lanes on the chains;
``[lane, warp, half, chain, 8]`` ran the assembly in the plain layout, halves fastest: both garbage.)
Weights travel as int64 and x as int32: byte tiles carried between steps as bytes cost ~100 ``PRMT`` a
step to repack. The GPU test compares every tile with a float64 product.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

ROWS, COLUMNS = 16, 64  # one mma's rows; the columns of K a chunk (two halves of 32) covers
BLOCK_ROWS, CHUNK = tl.constexpr(ROWS), tl.constexpr(COLUMNS)
# (16-row blocks a program, chunks a warp's step, warps): run 31's best per shape first
TILES = ((1, 2, 4), (1, 4, 4), (1, 8, 4), (1, 2, 2), (1, 4, 2), (1, 2, 8), (1, 4, 8), (2, 2, 4), (2, 1, 4))


def _mma_asm(mode: int = 0) -> str:
    """One unit (a 16-row block's 64-column chunk) a thread: 8 elements of each operand. Acc ``$8``, ``$9``
    (row g, row g+8; the other six dead), the weight words as two 64-bit halves ``$16`` (columns 0-31 of the
    chunk) and ``$20`` (32-63; each repeated 4 times), x's 16 columns as bf16 pairs ``$24-$31``, the two
    rows' scale and zero words ``$32`` (row g) and ``$40`` (row g+8; repeated 8 times). Out: ``$0``, ``$1``
    the new sums (``$2-$7`` dead, dropped by ptxas)."""
    lines = [
        "mov.b32 one, 0x3F803F80;",
        "shl.b32 sa, $32, 16;", "shl.b32 sb, $40, 16;",  # the bf16 scales as float32
        "prmt.b32 za, $32, 0, 0x3232;", "prmt.b32 zb, $40, 0, 0x3232;",  # -(128 + z) in both halves
        "mov.b64 {w0, w1}, $16;", "mov.b64 {w2, w3}, $20;",
        "mov.f32 d0, 0f00000000;", "mov.f32 d1, 0f00000000;", "mov.f32 d2, 0f00000000;", "mov.f32 d3, 0f00000000;",
    ]
    for j in range(4):
        word, b0, b1 = f"w{j}", f"${24 + 2 * j}", f"${25 + 2 * j}"
        lines += [f"shr.u32 t1, {word}, 4;", f"shr.u32 t2, {word}, 8;", f"shr.u32 t3, {word}, 12;"]
        for a, source in enumerate((word, "t1", "t2", "t3")):
            lines.append(f"lop3.b32 a{a}, {source}, 0x000F000F, 0x43004300, 0xEA;")
        lines += [f"fma.rn.bf16x2 a{a}, a{a}, one, {'za' if a % 2 == 0 else 'zb'};" for a in range(4)]
        if mode == 0:
            lines.append(f"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {{d0, d1, d2, d3}}, "
                         f"{{a0, a1, a2, a3}}, {{{b0}, {b1}}}, {{d0, d1, d2, d3}};")
        else:  # diagnosis: the same operands consumed without the mma
            lines += [f"add.f32 d0, d0, a{a};" for a in range(4)]
            lines += [f"add.f32 d2, d2, {b0};", f"add.f32 d2, d2, {b1};"]
    lines += ["fma.rn.f32 $0, sa, d0, $8;", "fma.rn.f32 $1, sb, d2, $9;"]
    lines += [f"mov.b32 ${i}, 0;" for i in range(2, 8)]
    registers = "{ .reg .b32 sa, sb, za, zb, one, t1, t2, t3, a0, a1, a2, a3, w0, w1, w2, w3; .reg .f32 d<4>; "
    return registers + " ".join(lines) + " }"


MMA_ASM = tl.constexpr(_mma_asm())
NO_MMA_ASM = tl.constexpr(_mma_asm(1))  # diagnosis only
MMA_IO = tl.constexpr(",".join(["=r"] * 8 + ["r"] * 8 + ["l"] * 8 + ["r"] * 24))


@triton.jit
def _int4_mma_gemv_kernel(x_ptr, w_ptr, sz_ptr, out_ptr, N, KC: tl.constexpr, CHUNKS_PER_GROUP: tl.constexpr,
                          CHAINS: tl.constexpr, UNROLL: tl.constexpr, WARPS: tl.constexpr,
                          MODE: tl.constexpr = 0):
    """One program: ``CHAINS`` blocks of 16 rows; each warp takes ``UNROLL`` of K's 64-column chunks a step
    (the warps in turn). Tiles are ``[lane, warp, 4, half, chain, chunk]``: x as int32 (bf16 pairs, 4 a
    half), the weights as int64 (a lane's 8 bytes of a half; axis 2 of size 1), the scale words one per
    unit (the module docstring says why these shapes)."""
    pid = tl.program_id(0)
    lane = tl.arange(0, 32)[:, None, None, None, None, None]
    w = tl.arange(0, WARPS)[None, :, None, None, None, None]
    v = tl.arange(0, 4)[None, None, :, None, None, None]
    h = tl.arange(0, 2)[None, None, None, :, None, None]
    c = tl.arange(0, CHAINS)[None, None, None, None, :, None]
    u = tl.arange(0, UNROLL)[None, None, None, None, None, :]
    block = pid * CHAINS + c
    w_off = block * KC * 64 + lane * 2 + h  # int64 words: 512 bytes a (block, chunk), 16 a lane
    x_off = 16 * h + 4 * (lane & 3) + v  # int32 words: 32 a chunk
    row_g = block * BLOCK_ROWS + (lane >> 2)
    keep = (h == 0) & (v < 2)
    acc = tl.zeros((32, WARPS, 4, 2, CHAINS, UNROLL), dtype=tl.float32)
    chunk = w * UNROLL + u
    STEP: tl.constexpr = WARPS * UNROLL  # noqa: N806
    a = _load_step(x_ptr, w_ptr, sz_ptr, N, chunk, w_off, x_off, row_g, KC, CHUNKS_PER_GROUP)
    for k0 in range(0, KC, 2 * STEP):
        # Two steps an iteration over two sets of registers: step B's loads go out before step A's
        # arithmetic and the next A's before B's. Carried in one set, the next step's loads had to wait
        # for the last read of the registers they overwrite (ptxas put them after every mma). ptxas still
        # spreads them between the mma's; from memory this was within 1-6 % of one set (run 31).
        b = _load_step(x_ptr, w_ptr, sz_ptr, N, k0 + STEP + chunk, w_off, x_off, row_g, KC, CHUNKS_PER_GROUP)
        acc = tl.where(keep, _mma_unit(acc, a, MODE), 0.0)
        a = _load_step(x_ptr, w_ptr, sz_ptr, N, k0 + 2 * STEP + chunk, w_off, x_off, row_g, KC,
                       CHUNKS_PER_GROUP)
        acc = tl.where(keep, _mma_unit(acc, b, MODE), 0.0)
    t = tl.sum(tl.sum(tl.sum(acc, axis=5), axis=3), axis=1)  # [32, 4, CHAINS]: chunks, halves, warps summed
    quad = tl.arange(0, 32)[:, None, None]
    t = tl.where((quad & 3) == 0, t, 0.0)  # a quad's four lanes hold the same sums: keep lane 4g's
    t = tl.sum(tl.reshape(t, (8, 4, 4, CHAINS)), axis=1)  # [g, v, CHAINS]
    col = tl.arange(0, 4)[None, :, None]
    rows = (pid * CHAINS + tl.arange(0, CHAINS)[None, :]) * BLOCK_ROWS + tl.arange(0, 8)[:, None]  # [g, CHAINS]
    tl.store(out_ptr + rows, tl.sum(tl.where(col == 0, t, 0.0), axis=1).to(out_ptr.dtype.element_ty))
    tl.store(out_ptr + rows + 8, tl.sum(tl.where(col == 1, t, 0.0), axis=1).to(out_ptr.dtype.element_ty))


@triton.jit
def _mma_unit(acc, step, MODE: tl.constexpr):
    """``acc`` plus one step's products (``MODE`` 1 and 2: without the ``mma``, the loads alone; diagnosis)."""
    wt, xt, sa, sb = step
    if MODE == 0:
        out = tl.inline_asm_elementwise(asm=MMA_ASM, constraints=MMA_IO, args=[acc, wt, xt, sa, sb],
                                        dtype=tl.float32, is_pure=True, pack=8)
    elif MODE == 1:
        out = tl.inline_asm_elementwise(asm=NO_MMA_ASM, constraints=MMA_IO, args=[acc, wt, xt, sa, sb],
                                        dtype=tl.float32, is_pure=True, pack=8)
    else:
        out = acc + (wt.to(tl.float32) + xt.to(tl.float32) + sa.to(tl.float32) + sb.to(tl.float32))
    return out


@triton.jit
def _load_step(x_ptr, w_ptr, sz_ptr, N, kc, w_off, x_off, row_g, KC: tl.constexpr, CHUNKS_PER_GROUP: tl.constexpr):
    """One step's weight words, x columns and scale words (zeros past K's last chunk)."""
    live = kc < KC
    wt = tl.load(w_ptr + w_off + kc * 64, mask=live, other=0)
    xt = tl.load(x_ptr + x_off + kc * 32, mask=live, other=0)
    group_row = (kc // CHUNKS_PER_GROUP) * N + row_g
    sa = tl.load(sz_ptr + group_row, mask=live, other=0)
    sb = tl.load(sz_ptr + group_row + 8, mask=live, other=0)
    return wt, xt, sa, sb


def pack(q: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N/16 * K/64 * 512]`` from q ``[N, K]`` (values 0..15; N a multiple of 16, K of 64)."""
    n, k = q.shape
    t = q.to(torch.uint8).view(n // ROWS, 2, 8, k // COLUMNS, 2, 4, 2, 4)  # block, g/g+8, g, chunk, h, c, m, col
    t = t[..., [0, 2, 1, 3]]  # the byte order of a word: columns t0, t2, t1, t3
    low, high = t[:, 0], t[:, 1]  # rows g and g + 8: [block, g, chunk, h, c, m, byte]
    bytes_ = low | (high << 4)
    return bytes_.permute(0, 2, 1, 4, 3, 5, 6).reshape(-1).contiguous()  # block, chunk, g, c (lane), h, m, byte


def unpack(packed: torch.Tensor, *, n: int, k: int) -> torch.Tensor:
    """The inverse of ``pack``: q ``[N, K]`` uint8 (the CPU check of the layout)."""
    b = packed.view(n // ROWS, k // COLUMNS, 8, 4, 2, 2, 4).permute(0, 2, 1, 4, 3, 5, 6)  # block g chunk h c m byte
    both = torch.stack((b & 0x0F, b >> 4), dim=1)  # block, row g/g+8, g, chunk, h, c, m, byte
    return both[..., [0, 2, 1, 3]].reshape(n, k)


def pack_scales_zeros(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """int32 ``[groups, N]``: bf16 ``s`` in the low half, bf16 ``-(128 + z)`` in the high (exact for integral
    ``-128 <= z <= 128``: glmkb's zeros are integral and rounded, not clamped, ``llm.quantization``)."""
    s = scales.to(torch.bfloat16).t().contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    z = (-(zeros.float() + 128.0)).to(torch.bfloat16).t().contiguous().view(torch.int16).to(torch.int32)
    return (s | (z << 16)).contiguous()


def from_runs(weight: torch.Tensor, scales_zeros: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """This probe's form of a layer in glmkb's "runs" form (``llm.int4_runs``)."""
    from llm.int4_runs import unpack_runs, unpack_scales_zeros

    scales, zeros = unpack_scales_zeros(scales_zeros)
    return pack(unpack_runs(weight)), pack_scales_zeros(scales, zeros)


def launch_int4_mma_gemv(x: torch.Tensor, packed: torch.Tensor, sz: torch.Tensor, *, n: int, k: int,
                         group_size: int, chains: int = 2, unroll: int = 4, num_warps: int = 4,
                         out: torch.Tensor | None = None, mode: int = 0) -> torch.Tensor:
    """``x [1, K] @ W.T`` -> ``[1, N]`` in x's dtype (``mode`` 1 and 2 time the kernel without its ``mma`` and
    without any arithmetic: diagnosis, wrong results)."""
    assert n % (ROWS * chains) == 0 and k % COLUMNS == 0 and group_size % COLUMNS == 0, (n, k, group_size)
    out = torch.empty((1, n), dtype=x.dtype, device=x.device) if out is None else out
    _int4_mma_gemv_kernel[(n // (ROWS * chains),)](
        x.view(torch.int32), packed.view(torch.int64), sz, out, n, KC=k // COLUMNS,
        CHUNKS_PER_GROUP=group_size // COLUMNS, CHAINS=chains, UNROLL=unroll, WARPS=num_warps, MODE=mode,
        num_warps=num_warps, num_stages=1)
    return out
