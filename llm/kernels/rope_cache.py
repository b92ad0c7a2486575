"""Triton: the rotary embedding of decode (or prompt) tokens and their K/V cache writes, in one launch.

Measured on an H200 (``bench/step_profile.py``, ChatGLM3-6B shape, run 15): between the fused
q/k/v GEMV and the attention of a layer, Inductor runs three small kernels: the rotary of q
(~1.6 us), the rotary of k with its write into the K cache (~1.6 us) and the write of v into the
V cache (~1 us), x 28 layers = ~120 us of a 3.5 ms step, nearly all of it launch and ramp (the
data is 9 KB per layer). Here one program per (row, head) of the fused q/k/v output does its
head: q heads are rotated into ``q_out``, k heads rotated and written at the cache slot, v heads
copied to the V cache at the same slot.

The rotary is GLM's (``transformers.models.glm.modeling_glm.apply_rotary_pos_emb``): the first
``R`` of ``D`` dims (``R`` = ``cos.shape[-1]``, half the head for ChatGLM2/3 and GLM-4) rotate in
interleaved pairs ``(2i, 2i+1)`` by the angle of ``cos[i]``/``sin[i]``, ``i < R/2``; the rest pass
through. Computed in float32 and rounded once, as Inductor's fused kernel does.

With ``positions`` (``TABLE``), ``cos``/``sin`` are the rotary module's own tables over every
position ``(P, R)`` (``llm.fast_decode.rotary_table``) and each token reads its row at its position:
the step no longer computes the angles, their ``cos``/``sin`` and the casts (transformers 5.17-5.23:
a float32 matmul and seven Inductor kernels, ~13.7 us of every 6B decode step, run 21 on the H200).

This module imports Triton; ``llm.kernels.rope_cache_op`` wraps it as a torch custom op and
falls back to PyTorch where Triton is missing.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm.kernels.grid_dependency import wait_for_inputs
from llm.kernels.pdl import launch_pdl


@triton.jit
def _rope_cache_kernel(
    qkv_ptr, cos_ptr, sin_ptr, slot_ptr, length_ptr, q_ptr, k_ptr, v_ptr, pos_ptr, T, P,
    stride_qkv, stride_cos, stride_sin, stride_pb, stride_pt,
    stride_kb, stride_kh, stride_kl, stride_vb, stride_vh, stride_vl,
    HEADS: tl.constexpr, KV_HEADS: tl.constexpr, HALF: tl.constexpr, ROT_PAIRS: tl.constexpr,
    TABLE: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_inputs(PDL)
    row = tl.program_id(0)  # token t of batch row b: b * T + t
    head = tl.program_id(1)  # q heads, then k heads, then v heads, as the fused projection lays them out
    b = row // T
    t = row % T
    i = tl.arange(0, BLOCK)  # pair index: dims 2i and 2i + 1
    ok = i < HALF
    src = qkv_ptr + row * stride_qkv + head * (2 * HALF)
    even = tl.load(src + 2 * i, mask=ok, other=0.0).to(tl.float32)
    odd = tl.load(src + 2 * i + 1, mask=ok, other=0.0).to(tl.float32)
    if head < HEADS + KV_HEADS:  # q or k: rotate the first ROT_PAIRS pairs
        rot = i < ROT_PAIRS
        at = row
        if TABLE:  # the token's row of the tables (clamped: a padding token's position may be anything)
            at = tl.minimum(tl.maximum(tl.load(pos_ptr + b * stride_pb + t * stride_pt), 0), P - 1)
        c = tl.load(cos_ptr + at * stride_cos + i, mask=rot, other=1.0).to(tl.float32)
        s = tl.load(sin_ptr + at * stride_sin + i, mask=rot, other=0.0).to(tl.float32)
        even, odd = even * c - odd * s, odd * c + even * s
    if head < HEADS:
        if row == 0 and head == 0:  # the cache's length: the slot read here from another tensor, no race
            tl.store(length_ptr, tl.load(slot_ptr) + T)
        dst = q_ptr + ((b * HEADS + head) * T + t) * (2 * HALF)  # q as (B, H, T, D)
        tl.store(dst + 2 * i, even.to(q_ptr.dtype.element_ty), mask=ok)
        tl.store(dst + 2 * i + 1, odd.to(q_ptr.dtype.element_ty), mask=ok)
    elif head < HEADS + KV_HEADS:
        slot = tl.load(slot_ptr) + t
        dst = k_ptr + b * stride_kb + (head - HEADS) * stride_kh + slot * stride_kl
        tl.store(dst + 2 * i, even.to(k_ptr.dtype.element_ty), mask=ok)
        tl.store(dst + 2 * i + 1, odd.to(k_ptr.dtype.element_ty), mask=ok)
    else:
        slot = tl.load(slot_ptr) + t
        dst = v_ptr + b * stride_vb + (head - HEADS - KV_HEADS) * stride_vh + slot * stride_vl
        tl.store(dst + 2 * i, even.to(v_ptr.dtype.element_ty), mask=ok)
        tl.store(dst + 2 * i + 1, odd.to(v_ptr.dtype.element_ty), mask=ok)


@triton.jit
def row_rotary(cos_ptr, sin_ptr, pos_ptr, b, P, stride_cos, stride_sin, stride_pb, rd,
               ROT_PAIRS: tl.constexpr, TABLE: tl.constexpr):
    """``(cos, signed sin)`` over a head's dims ``rd`` for the one token of batch row ``b``: dim ``d``
    rotates with its pair partner ``d ^ 1`` by the angle of pair ``d // 2`` (``cos`` 1 and ``sin`` 0
    past the ``ROT_PAIRS`` rotated pairs), ``sin`` negated on even dims, so that
    ``rotate_pairs(x, x[d ^ 1], ...)`` is ``_rope_cache_kernel``'s ``even * c - odd * s``, ``odd * c +
    even * s``. ``cos_ptr`` rows: the batch rows', or with ``TABLE`` the tables' at the row's position."""
    at = b
    if TABLE:
        at = tl.minimum(tl.maximum(tl.load(pos_ptr + b * stride_pb), 0), P - 1)
    pair = rd // 2
    rot = pair < ROT_PAIRS
    c = tl.load(cos_ptr + at * stride_cos + pair, mask=rot, other=1.0).to(tl.float32)
    s = tl.load(sin_ptr + at * stride_sin + pair, mask=rot, other=0.0).to(tl.float32)
    return c, tl.where(rd % 2 == 0, -s, s)


@triton.jit
def rotate_pairs(x, partner, c, signed_s):
    """GLM's rotary of ``x`` (float32) given each dim's pair partner and ``row_rotary``'s factors."""
    return x * c + partner * signed_s


def launch_rope_cache_write(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    length: torch.Tensor,
    heads: int,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate q and k of ``qkv`` ``(B, (H + 2 KV) * D)`` (one token per row) or ``(B, T, ...)``
    by ``cos``/``sin`` ``(B, T, R)`` (with ``positions`` ``(B, T)``: tables ``(P, R)`` read at each
    token's position), write k and v into ``k_cache``/``v_cache`` ``(B, KV, L, D)``
    at cache slots ``slot .. slot + T - 1`` (``slot``: a one-element long tensor, read on the GPU),
    set ``length`` (the cache layer's own count, a different tensor) to ``slot + T``, and return q
    as ``(B, H, T, D)`` contiguous. Needs contiguous ``qkv`` rows and unit stride along the last
    axis of every tensor (``rope_cache_op.rope_applies``)."""
    batch = qkv.shape[0]
    tokens = qkv.shape[1] if qkv.dim() == 3 else 1
    kv_heads, dim = k_cache.shape[1], k_cache.shape[3]
    qkv = qkv.reshape(batch * tokens, -1)
    if positions is None:
        cos, sin = cos.reshape(batch * tokens, -1), sin.reshape(batch * tokens, -1)
    pos = positions.reshape(batch, tokens) if positions is not None else slot  # slot: any tensor where unused
    q = torch.empty((batch, heads, tokens, dim), dtype=qkv.dtype, device=qkv.device)
    half = dim // 2
    pdl = launch_pdl(qkv.device)
    _rope_cache_kernel[(batch * tokens, heads + 2 * kv_heads)](
        qkv, cos, sin, slot, length, q, k_cache, v_cache, pos, tokens, cos.shape[0],
        qkv.stride(0), cos.stride(0), sin.stride(0),
        pos.stride(0) if positions is not None else 0, pos.stride(1) if positions is not None else 0,
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2),
        HEADS=heads, KV_HEADS=kv_heads, HALF=half, ROT_PAIRS=cos.shape[-1] // 2, TABLE=positions is not None,
        BLOCK=triton.next_power_of_2(half), PDL=pdl, num_warps=1, launch_pdl=pdl,
    )
    return q
