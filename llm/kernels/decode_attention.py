"""Triton flash-decoding for the decode step: one query token per row, grouped-query attention.

Measured on an H200 (``bench/step_profile.py``, ChatGLM3-6B shape): the packed attention of one
token (``llm.fast_decode.attention``) compiles to three kernels per layer, cuBLAS bmm 3.9 us +
Inductor's masked softmax 1.6 us + bmm 2.7 us = 8.2 us, x 28 layers = 230 us of a ~4 ms step.
Here it is two kernels:

1. ``_flash_decode_split``, one program per (row, K/V head, slice of the cache): loads the G query heads
   of its K/V head once as a ``[BLOCK_G, D]`` tile, walks its slice of the static cache in
   ``BLOCK_L`` blocks (``tl.dot`` for the ``[G, D] x [D, BLOCK_L]`` scores and the ``[G, BLOCK_L]
   x [BLOCK_L, D]`` values, G padded to 16 rows: the padding costs registers, no memory traffic),
   float32 online softmax, and writes the slice's partial (max, sum, unnormalised
   output). A block whose boolean mask is all False is skipped before K/V are loaded: at short
   context most of the static cache is masked (valid ~200 of 4096 slots).
2. ``_flash_decode_combine``, one program per (row, query head): rescales the slices' partials to a
   common max, sums, divides and writes ``(B, 1, H, D)`` in the value dtype, the layout
   ``packed_gqa_attention`` returns. Slices that saw no key are not read. With
   ``AttentionConfig.fused`` the split kernel does this itself, in the slice that finishes last
   (an atomic ticket per (row, K/V head)), and there is one launch.

With ``ROPE`` the split kernel also does ``llm.kernels.rope_cache``'s work for one decode token
(``llm.kernels.rope_attention`` says how and why).

The number of slices is a pure function of the shapes and the GPU's SM count (``plan``), and
every buffer is allocated per call at a size fixed by the shapes, so the launch is CUDA-graph
capturable: no host sync, no data-dependent shape.

Triton's interpreter (``TRITON_INTERPRET=1``, CPU tests) computes a bf16 ``tl.dot`` wrongly,
so there the operands are upcast to float32 first (``DOT_F32``); compiled kernels never are.

This module imports Triton; ``llm.kernels.decode_attention_op`` wraps it as a torch custom op
and falls back to PyTorch where Triton is missing.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from llm.kernels.give_up import INTERPRET
from llm.kernels.grid_dependency import wait_for_inputs
from llm.kernels.pdl import launch_pdl
from llm.kernels.rope_cache import rotate_pairs, row_rotary

if TYPE_CHECKING:
    from llm.kernels.rope_attention import NewToken

MIN_DOT_ROWS = 16  # tl.dot's smallest M


@dataclass(frozen=True)
class AttentionConfig:
    """Launch options: keys per block, target programs per SM (sets the number of slices), warps,
    stages, and ``skip``: branch around the K/V loads of a block with nothing to attend (else the
    loads are only predicated off, which keeps the loop free of branches for software pipelining;
    ``bench.decode_attention`` times both)."""

    block_l: int = 64
    programs_per_sm: int = 2
    num_warps: int = 4
    num_stages: int = 2
    skip: bool = True
    fused: bool = False
    """The slice that finishes last for its (row, K/V head) combines the partials (an atomic
    ticket per (row, K/V head)) instead of a second kernel: one launch, for the ~2.5 us floor
    a kernel of this size costs in a CUDA graph on the H200 (run 15: two kernels 5.7 us at B=1,
    L=1024, 200 slots attended)."""

    def __str__(self) -> str:  # compact, for bench tables
        flags = ("" if self.skip else "n") + ("f" if self.fused else "")
        return f"l{self.block_l}p{self.programs_per_sm}w{self.num_warps}s{self.num_stages}{flags}"


FEW_ROWS_CONFIG = AttentionConfig(block_l=32)
MANY_ROWS_CONFIG = AttentionConfig(block_l=128)


def default_config(batch: int, kv_heads: int) -> AttentionConfig:
    """The config for a shape, from the run-15 sweep on the H200 (``bench.decode_attention``,
    docs/bench-results/decode_attention.run15.h200.json; KV=2, G=16, D=128, L 1024/4096, 200
    slots attended or all): 32-key blocks at batch 1 (5.5-8.2 us, within 3 % of each case's
    best; 64-key blocks 6-10 % slower), 128-key blocks at batch 16 (8.6-28.6 us; 64-key blocks
    were up to 1.3x slower, 32-key ones 1.5x). Batches between are unmeasured: split at 4
    (row, K/V head) pairs."""
    return FEW_ROWS_CONFIG if batch * kv_heads <= 4 else MANY_ROWS_CONFIG


@functools.lru_cache(maxsize=8)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of ``device`` (4 on CPU: the interpreter, tests)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


_tickets: dict[tuple[torch.device, int], torch.Tensor] = {}  # fused combine: zeroed int32 per (row, K/V head)


def tickets(device: torch.device, count: int) -> torch.Tensor | None:
    """The ticket counters of ``fused`` launches over ``count`` (row, K/V head) pairs, zero
    between launches (the last slice resets its counter). Shared by every launch of that count
    on the device: two such launches must not run at once on two streams (the decode graph
    replays on one). None while a CUDA graph is captured and none exist yet (an allocation
    there would belong to the graph's pool): that launch takes the combine kernel instead."""
    key = (device, count)
    if key not in _tickets:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        _tickets[key] = torch.zeros(count, dtype=torch.int32, device=device)
    return _tickets[key]


def plan(batch: int, kv_heads: int, length: int, *, block_l: int, programs: int) -> tuple[int, int]:
    """``(splits, blocks_per_split)``: cut the cache's ``length`` into whole ``block_l`` blocks
    so that ``batch * kv_heads * splits`` comes near ``programs`` (one slice at least one block)."""
    blocks = triton.cdiv(length, block_l)
    want = max(1, triton.cdiv(programs, batch * kv_heads))
    per_split = triton.cdiv(blocks, min(blocks, want))
    return triton.cdiv(blocks, per_split), per_split


@triton.jit
def _write_new_token(qkv_row, k_dst, v_dst, k_head, v_head, stride_qh, rd, c, s):
    """The new token's k (rotated by ``c``/``s``, rounded once) and v from its fused q/k/v row into
    their cache slot."""
    k_src = qkv_row + k_head * stride_qh
    k = rotate_pairs(tl.load(k_src + rd).to(tl.float32), tl.load(k_src + (rd ^ 1)).to(tl.float32), c, s)
    tl.store(k_dst + rd, k.to(k_dst.dtype.element_ty))
    tl.store(v_dst + rd, tl.load(qkv_row + v_head * stride_qh + rd).to(v_dst.dtype.element_ty))


@triton.jit
def _attend_block(q, k_base, v_base, mask_base, rl, ok, rd, m_i, l_i, acc, scale, stride_kl, stride_vl, stride_ml,
                  MASK: tl.constexpr, DOT_F32: tl.constexpr):
    """One block of keys ``rl`` (``ok``: in the cache and attended) into the running max ``m_i``,
    sum ``l_i`` and unnormalised output ``acc`` of the G query heads."""
    k = tl.load(k_base + rl[:, None] * stride_kl + rd[None, :], mask=ok[:, None], other=0.0)
    v = tl.load(v_base + rl[:, None] * stride_vl + rd[None, :], mask=ok[:, None], other=0.0)
    if DOT_F32:
        s = tl.dot(q, tl.trans(k.to(tl.float32)), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    # Natural-log domain, not exp2 with log2(e) folded into the scale: an additive mask's
    # finfo.min times log2(e) would overflow to -inf where PyTorch's math keeps it finite.
    s = s * scale
    if MASK == 2:
        s += tl.load(mask_base + rl * stride_ml, mask=ok, other=0.0).to(tl.float32)[None, :]
    s = tl.where(ok[None, :], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # no -inf - -inf while a head saw nothing
    alpha = tl.exp(m_i - m_safe)
    p = tl.exp(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if DOT_F32:
        pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
    else:
        pv = tl.dot(p.to(v.dtype), v)  # probabilities in the value dtype, as the PyTorch math
    return m_new, l_i, acc * alpha[:, None] + pv


@triton.jit
def _flash_decode_split(
    q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, out_ptr, ticket_ptr,
    cos_ptr, sin_ptr, pos_ptr, slot_ptr, length_ptr,
    KV, G, L, blocks_per_split, scale, P,
    stride_qb, stride_qh,
    stride_kb, stride_kh, stride_kl,
    stride_vb, stride_vh, stride_vl,
    stride_mb, stride_ml,
    stride_cos, stride_sin, stride_pb,
    MASK: tl.constexpr, DIRECT: tl.constexpr, DOT_F32: tl.constexpr, SKIP: tl.constexpr, FUSED: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr, D: tl.constexpr, BLOCK_S: tl.constexpr, CHUNK: tl.constexpr,
    ROPE: tl.constexpr, ROT_PAIRS: tl.constexpr, TABLE: tl.constexpr, PDL: tl.constexpr,
):
    """MASK: 0 none, 1 boolean (as uint8, nonzero = attend), 2 additive float. DIRECT: one slice,
    write the normalised output to ``out_ptr`` instead of partials. FUSED: the last slice of a
    (row, K/V head) to finish combines its partials (``ticket_ptr``: one zeroed int32 each).
    ROPE: ``q_ptr`` is the fused q/k/v row of each batch row, unrotated; every program rotates its
    query heads, and the slice holding the cache slot ``slot_ptr`` first writes the new token's
    rotated k and its v there (and the cache's length), as ``_rope_cache_kernel`` would
    (``launch_rope_decode_attention``)."""
    wait_for_inputs(PDL)
    pid_bh = tl.program_id(0)  # row * KV + K/V head
    pid_s = tl.program_id(1)
    splits = tl.num_programs(1)
    b = (pid_bh // KV).to(tl.int64)
    kv = pid_bh % KV
    rg = tl.arange(0, BLOCK_G)
    rd = tl.arange(0, D)
    rl0 = tl.arange(0, BLOCK_L)
    g_ok = rg < G
    k_base = k_ptr + b * stride_kb + kv * stride_kh
    v_base = v_ptr + b * stride_vb + kv * stride_vh
    q_heads = q_ptr + b * stride_qb + (kv * G + rg)[:, None] * stride_qh
    q = tl.load(q_heads + rd[None, :], mask=g_ok[:, None], other=0.0)
    if ROPE:
        c, s = row_rotary(cos_ptr, sin_ptr, pos_ptr, b, P, stride_cos, stride_sin, stride_pb, rd, ROT_PAIRS, TABLE)
        partner = tl.load(q_heads + (rd ^ 1)[None, :], mask=g_ok[:, None], other=0.0)
        q = rotate_pairs(q.to(tl.float32), partner.to(tl.float32), c[None, :], s[None, :]).to(q.dtype)
        slot = tl.load(slot_ptr)
        if (slot < L) & (slot // (blocks_per_split * BLOCK_L) == pid_s):  # this slice attends the new token
            _write_new_token(q_ptr + b * stride_qb, k_base + slot * stride_kl, v_base + slot * stride_vl,
                             KV * G + kv, KV * G + KV + kv, stride_qh, rd, c, s)
            if (b == 0) & (kv == 0):
                tl.store(length_ptr, slot + 1)
            tl.debug_barrier()  # the slot's k and v stored before any thread of this program reads them
    if DOT_F32:
        q = q.to(tl.float32)
    mask_base = mask_ptr + b * stride_mb
    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, D), dtype=tl.float32)
    first = pid_s * blocks_per_split * BLOCK_L
    for i in range(0, blocks_per_split):
        rl = first + i * BLOCK_L + rl0
        ok = rl < L
        if MASK == 1:
            ok = ok & (tl.load(mask_base + rl * stride_ml, mask=ok, other=0) != 0)
        if SKIP:
            if tl.max(ok.to(tl.int32), axis=0) > 0:  # a block with nothing to attend loads no K/V
                m_i, l_i, acc = _attend_block(q, k_base, v_base, mask_base, rl, ok, rd, m_i, l_i, acc, scale,
                                              stride_kl, stride_vl, stride_ml, MASK, DOT_F32)
        else:  # masked keys' loads predicated off, no branch
            m_i, l_i, acc = _attend_block(q, k_base, v_base, mask_base, rl, ok, rd, m_i, l_i, acc, scale,
                                          stride_kl, stride_vl, stride_ml, MASK, DOT_F32)
    if DIRECT:
        h = kv * G + rg
        out = acc / l_i[:, None]
        tl.store(out_ptr + (b * KV * G + h)[:, None] * D + rd[None, :], out.to(out_ptr.dtype.element_ty),
                 mask=g_ok[:, None])
    else:
        row = (pid_bh * splits + pid_s).to(tl.int64) * G + rg  # partials: [B*KV, splits, G(, D)]
        tl.store(m_ptr + row, m_i, mask=g_ok)
        tl.store(l_ptr + row, l_i, mask=g_ok)
        seen = g_ok & (m_i > float("-inf"))  # a slice that saw nothing writes no output and is not read
        tl.store(acc_ptr + row[:, None] * D + rd[None, :], acc, mask=seen[:, None])
        if FUSED:
            tl.debug_barrier()  # every thread's partials stored before the ticket releases them
            ticket = tl.atomic_add(ticket_ptr + pid_bh, 1, sem="acq_rel", scope="gpu")
            if ticket == splits - 1:
                _combine_group(m_ptr, l_ptr, acc_ptr, out_ptr, pid_bh, G, splits, rg, rd, g_ok,
                               BLOCK_S, CHUNK, BLOCK_G, D)
                tl.store(ticket_ptr + pid_bh, 0)  # zero for the next launch


@triton.jit
def _combine_group(m_ptr, l_ptr, acc_ptr, out_ptr, pid_bh, G, SPLITS, rg, rd, g_ok,
                   BLOCK_S: tl.constexpr, CHUNK: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr):
    """``_flash_decode_combine`` for the G query heads of one (row, K/V head), inside the split
    kernel; loads bypass L1 (``.cg``): other SMs wrote the partials during this launch."""
    base = (pid_bh * SPLITS).to(tl.int64)
    rs = tl.arange(0, BLOCK_S)
    m_all = tl.load(m_ptr + (base + rs)[:, None] * G + rg[None, :], mask=(rs < SPLITS)[:, None] & g_ok[None, :],
                    other=float("-inf"), cache_modifier=".cg")
    m_max = tl.max(m_all, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    rc = tl.arange(0, CHUNK)
    total = tl.zeros((BLOCK_G, D), dtype=tl.float32)
    norm = tl.zeros((BLOCK_G,), dtype=tl.float32)
    for c in range(0, SPLITS, CHUNK):
        row = (base + c + rc)[:, None] * G + rg[None, :]  # [CHUNK, BLOCK_G]
        ok = ((c + rc) < SPLITS)[:, None] & g_ok[None, :]
        m = tl.load(m_ptr + row, mask=ok, other=float("-inf"), cache_modifier=".cg")
        w = tl.exp(m - m_max[None, :])
        norm += tl.sum(tl.load(l_ptr + row, mask=ok, other=0.0, cache_modifier=".cg") * w, axis=0)
        seen = ok & (m > float("-inf"))
        acc = tl.load(acc_ptr + row[:, :, None] * D + rd[None, None, :], mask=seen[:, :, None], other=0.0,
                      cache_modifier=".cg")
        total += tl.sum(acc * w[:, :, None], axis=0)
    out = total / tl.where(g_ok, norm, 1.0)[:, None]  # padding rows past G: nothing, not 0/0
    tl.store(out_ptr + (pid_bh * G + rg).to(tl.int64)[:, None] * D + rd[None, :], out.to(out_ptr.dtype.element_ty),
             mask=g_ok[:, None])


@triton.jit
def _flash_decode_combine(m_ptr, l_ptr, acc_ptr, out_ptr, G, SPLITS, BLOCK_S: tl.constexpr, CHUNK: tl.constexpr,
                          D: tl.constexpr, PDL: tl.constexpr):
    wait_for_inputs(PDL)
    pid = tl.program_id(0)  # (row * KV + K/V head) * G + group member == row * H + query head
    bh = pid // G
    g = pid % G
    rs = tl.arange(0, BLOCK_S)
    rd = tl.arange(0, D)
    base = (bh * SPLITS).to(tl.int64)
    m_all = tl.load(m_ptr + (base + rs) * G + g, mask=rs < SPLITS, other=float("-inf"))
    m_max = tl.max(m_all, axis=0)
    m_max = tl.where(m_max == float("-inf"), 0.0, m_max)
    rc = tl.arange(0, CHUNK)
    total = tl.zeros((D,), dtype=tl.float32)
    norm = tl.zeros((CHUNK,), dtype=tl.float32)
    for c in range(0, SPLITS, CHUNK):  # CHUNK slices' outputs at a time: registers stay bounded at 128 slices
        row = (base + c + rc) * G + g
        c_ok = c + rc < SPLITS
        m = tl.load(m_ptr + row, mask=c_ok, other=float("-inf"))
        w = tl.exp(m - m_max)
        norm += tl.load(l_ptr + row, mask=c_ok, other=0.0) * w
        seen = c_ok & (m > float("-inf"))
        acc = tl.load(acc_ptr + row[:, None] * D + rd[None, :], mask=seen[:, None], other=0.0)
        total += tl.sum(acc * w[:, None], axis=0)
    out = total / tl.sum(norm, axis=0)
    tl.store(out_ptr + pid.to(tl.int64) * D + rd, out.to(out_ptr.dtype.element_ty))


def launch_decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    config: AttentionConfig | None = None,
) -> torch.Tensor:
    """Softmax(q K^T * scale + mask) V for ``query`` ``(B, H, 1, D)`` against ``key``/``value``
    ``(B, KV, L, D)`` (H = KV * G), ``mask`` ``(B or 1, 1, 1, >= L)`` boolean (True = attend) or
    additive float, or None; returns ``(B, 1, H, D)`` contiguous in ``value``'s dtype. ``config``:
    ``default_config`` of the shape unless given.
    Needs unit stride along D and D a power of two (``decode_attention_op.attention_applies``)."""
    q = query[:, :, 0, :]
    return launch_attention_kernels(q, q.stride(1), query.shape[1], key, value, mask, scale, config, rope=None)


def launch_attention_kernels(
    q: torch.Tensor, stride_qh: int, heads: int, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
    scale: float, config: AttentionConfig | None, *, rope: NewToken | None,
) -> torch.Tensor:
    """The split kernel (and the combine kernel unless one slice or ``fused``) over query heads
    ``q[b, h * stride_qh + d]`` (B rows, H heads); with ``rope``, unrotated heads of the fused q/k/v
    rows, rotated and the new token written by the split kernel (``llm.kernels.rope_attention``)."""
    batch, dim = q.shape[0], key.shape[3]
    kv_heads, length = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    config = config or default_config(batch, kv_heads)
    out = torch.empty((batch, 1, heads, dim), dtype=value.dtype, device=value.device)
    splits, per_split = plan(batch, kv_heads, length, block_l=config.block_l,
                             programs=config.programs_per_sm * sm_count(q.device))
    kind, m2 = 0, out  # out stands in for an absent mask; never read
    if mask is not None:
        m2 = mask[:, 0, 0, :length]
        kind = 1 if m2.dtype == torch.bool else 2
        if kind == 1:
            m2 = m2.view(torch.uint8)
    direct = splits == 1
    ticket = tickets(q.device, batch * kv_heads) if config.fused and not direct else None
    if direct:
        m_part = l_part = acc_part = out
    else:
        m_part = torch.empty((batch * kv_heads, splits, groups), dtype=torch.float32, device=q.device)
        l_part = torch.empty_like(m_part)
        acc_part = torch.empty((batch * kv_heads, splits, groups, dim), dtype=torch.float32, device=q.device)
    block_s = triton.next_power_of_2(splits)
    pdl = launch_pdl(q.device)
    cos = sin = slot = count = pos = out  # stand-ins without ROPE; never read
    if rope is not None:
        cos, sin, slot, count = rope.cos, rope.sin, rope.slot, rope.length
        pos = rope.positions if rope.positions is not None else slot
    _flash_decode_split[(batch * kv_heads, splits)](
        q, key, value, m2, m_part, l_part, acc_part, out, ticket if ticket is not None else out,
        cos, sin, pos, slot, count,
        kv_heads, groups, length, per_split, scale, cos.shape[0],
        q.stride(0), stride_qh,
        key.stride(0), key.stride(1), key.stride(2),
        value.stride(0), value.stride(1), value.stride(2),
        m2.stride(0) if mask is not None and m2.shape[0] > 1 else 0, m2.stride(-1) if mask is not None else 0,
        cos.stride(0), sin.stride(0), pos.stride(0) if rope is not None and rope.positions is not None else 0,
        MASK=kind, DIRECT=direct, DOT_F32=INTERPRET or q.dtype == torch.float32, SKIP=config.skip,
        FUSED=ticket is not None, BLOCK_G=max(MIN_DOT_ROWS, triton.next_power_of_2(groups)), BLOCK_L=config.block_l,
        D=dim, BLOCK_S=block_s, CHUNK=min(4, block_s), ROPE=rope is not None,
        ROT_PAIRS=cos.shape[-1] // 2 if rope is not None else 0, TABLE=rope is not None and rope.positions is not None,
        PDL=pdl, num_warps=config.num_warps, num_stages=config.num_stages, launch_pdl=pdl,
    )
    if not direct and ticket is None:
        _flash_decode_combine[(batch * heads,)](
            m_part, l_part, acc_part, out, groups, splits,
            BLOCK_S=block_s, CHUNK=min(16, block_s), D=dim, PDL=pdl, num_warps=4, launch_pdl=pdl,
        )
    return out
