"""Triton: a decode step's sampled token choice when top-k is small (generate's default top-k 50), in two launches.

``token_sampling``'s radix selects find top-k's and top-p's edges over the whole row in ten levels
of one launch each; on an H100 (run 30, 65,024 tokens, ``bench.token_choice``) top-k 50 + top-p
0.8 took 170.1 us a step against PyTorch's 220.9, and at 16 rows 860.4 against 424.5: each level
walks the whole row again. A small top-k needs far less: this module's two launches took 35.4 us
(16 rows: 51.6), and sampled decode gained 3.7 % (bf16) to 8.0 % (INT4) tok/s. The k largest
values of a row are among the k largest of each chunk of it, so:

- ``_chunk_candidates`` (one program per row and ``BLOCK`` columns) applies penalty, eos
  suppression and temperature (``choose_tokens``' order), stores the scaled row, and keeps its
  chunk's ``KEEP`` largest (``KEEP``, a power of two at least k) as int64 keys that order by value,
  then by lower column first;
- ``_sample_candidates`` (one program per row) takes the ``KEEP`` largest of all chunks' keys; the
  k-th of them is top-k's edge (ties at it kept, as transformers keeps them); top-p's edge comes
  from the masses of those more probable, computed pairwise over the ``KEEP`` (ties kept whole,
  as ``token_sampling`` keeps them); then the exponential race (``x - log E`` over PyTorch's own
  ``Exp(1)`` noise, as ``choose_tokens`` races ``p / E``) over the candidates kept, and the token
  written, marked seen and the slot moved on (``token_choice._write_token``, as ``_pick_token`` ends).

Every token above top-k's edge is a candidate (fewer than k of them exist, so fewer than ``KEEP``
in any chunk); tokens equal to the edge may not be, where a chunk had more of them than it kept:
then, and only then, the program counts and races over the stored row itself (a flat row, a
top-k past the finite tokens). ``token_choice_op.sampled_choice`` routes top-k of at most
``MAX_TOP_K`` here and everything else to ``token_sampling``. This module imports Triton;
``llm.kernels.token_choice_op`` says when it can run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm.kernels.grid_dependency import wait_for_inputs
from llm.kernels.pdl import launch_pdl
from llm.kernels.token_choice import _write_token
from llm.kernels.token_choice_op import MAX_TOP_K
from llm.kernels.token_sampling import _scaled_chunk

MAX_CHUNKS = 32  # programs per row in the first launch: the second takes the top of MAX_CHUNKS * KEEP keys
MIN_BLOCK = 1024  # columns per program at least: a small vocabulary in a few programs
NO_KEY = tl.constexpr(-(2**63))  # below every token's key: padding
LOW = tl.constexpr(2**31 - 1)  # a key's low half holds LOW - column: lower columns first among equal values
NOISE_FLOOR = tl.constexpr(1e-10)  # choose_tokens clamps its exponential noise to this
SCAN = tl.constexpr(1024)  # columns per step of the rare pass over the whole row
HAS_TOPK = hasattr(tl, "topk")  # Triton 3.6 (the GPU image's) and later; else a full sort and a slice


@triton.jit
def _largest(keys, KEEP: tl.constexpr, N: tl.constexpr, HAS_TOPK: tl.constexpr):
    """The ``KEEP`` largest of ``N`` keys, largest first (``tl.topk`` where this Triton has it)."""
    if HAS_TOPK:
        return tl.topk(keys, KEEP)
    else:
        rows = tl.reshape(tl.sort(keys, descending=True), (N // KEEP, KEEP))
        first = tl.arange(0, N // KEEP)[:, None] == 0
        return tl.max(tl.where(first, rows, NO_KEY), axis=0)


@triton.jit
def _key(x, cols):
    """An int64 that orders as (``x``, then lower column first): ``x``'s float bits made orderable
    as a signed integer in the high half, ``LOW - column`` in the low half."""
    bits = x.to(tl.int32, bitcast=True)
    orderable = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    return (orderable.to(tl.int64) << 32) | (-cols + LOW).to(tl.int64)


@triton.jit
def _value(key):
    high = (key >> 32).to(tl.int32)
    return (high ^ ((high >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def _column(key):
    return -(key & 0xFFFFFFFF).to(tl.int32) + LOW


@triton.jit
def _chunk_candidates(
    logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, temperature_ptr, x_ptr, cand_ptr,
    V, CHUNKS, stride_l, stride_s,
    PENALTY: tl.constexpr, EOS: tl.constexpr, BLOCK: tl.constexpr, KEEP: tl.constexpr, HAS_TOPK: tl.constexpr,
    PDL: tl.constexpr,
):
    """The scaled row into ``x`` (``token_sampling._scaled_chunk``) and this chunk's ``KEEP`` largest
    keys into ``cand``."""
    wait_for_inputs(PDL)
    row, chunk, cols, ok, v = _scaled_chunk(logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, temperature_ptr,
                                            x_ptr, V, stride_l, stride_s, PENALTY, EOS, BLOCK)
    keys = tl.where(ok, _key(v, cols), NO_KEY)
    tl.store(cand_ptr + (row * CHUNKS + chunk) * KEEP + tl.arange(0, KEEP), _largest(keys, KEEP, BLOCK, HAS_TOPK))


@triton.jit
def _scan_ties(x_ptr, noise_ptr, row, V, stride_n, edge, top, THRESHOLD_KNOWN: tl.constexpr, threshold):
    """The rare pass over the stored row: (count of values equal to ``edge``) or, once the threshold
    is known, the race's (best score, first column) over every token at or above it."""
    count = tl.zeros((), dtype=tl.float32)
    best = tl.full((), -float("inf"), tl.float32)
    first = tl.full((), LOW, tl.int32)
    for start in range(0, V, SCAN):
        cols = start + tl.arange(0, SCAN)
        ok = cols < V
        x = tl.load(x_ptr + row * V + cols, mask=ok, other=-float("inf"))
        if THRESHOLD_KNOWN:
            kept = ok & (x >= threshold) & (tl.exp(x - top) > 0)
            noise = tl.maximum(tl.load(noise_ptr + row * stride_n + cols, mask=ok, other=1.0), NOISE_FLOOR)
            score = tl.where(kept, x - tl.log(noise), -float("inf"))
            chunk_best = tl.max(score, axis=0)
            chunk_first = tl.min(tl.where(kept & (score == chunk_best), cols, LOW), axis=0)
            better = chunk_best > best
            first = tl.where(better, chunk_first, first)
            best = tl.maximum(best, chunk_best)
        else:
            count += tl.sum((ok & (x == edge)).to(tl.float32), axis=0)
    return count, best, first


@triton.jit
def _sample_candidates(
    x_ptr, cand_ptr, noise_ptr, top_p_ptr, token_ptr, seen_ptr, cur_ptr, top_k, V, CHUNKS, stride_n, stride_t,
    stride_s,
    KEEP: tl.constexpr, CHUNKS_P2: tl.constexpr, HAS_TOPK: tl.constexpr, PENALTY: tl.constexpr,
    ADVANCE: tl.constexpr, PDL: tl.constexpr,
):
    """Top-k's edge, top-p's edge and the race over the candidates; the token written."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    offs = tl.arange(0, CHUNKS_P2 * KEEP)
    chunk = offs // KEEP
    keys = tl.load(cand_ptr + row * CHUNKS * KEEP + offs, mask=chunk < CHUNKS, other=NO_KEY)
    best_keys = _largest(keys, KEEP, CHUNKS_P2 * KEEP, HAS_TOPK)
    rank = tl.arange(0, KEEP)
    edge_key = tl.max(tl.where(rank == top_k - 1, best_keys, NO_KEY), axis=0)
    edge = _value(edge_key)
    top = _value(tl.max(best_keys, axis=0))
    # Tokens equal to the edge a chunk may have left out: its last key kept is at the edge.
    last = (offs % KEEP == KEEP - 1) & (keys != NO_KEY) & (_value(keys) == edge)
    complete = (tl.max(last.to(tl.int32), axis=0) == 0) | (edge == -float("inf"))  # ties at -inf weigh nothing
    valid = keys != NO_KEY
    v = _value(keys)
    w = tl.where(valid & (v >= edge), tl.exp(v - top), 0.0)
    if complete:
        ties = tl.sum((valid & (v == edge)).to(tl.float32), axis=0)
    else:
        ties, _, _ = _scan_ties(x_ptr, noise_ptr, row, V, stride_n, edge, top, False, edge)
    total = tl.sum(tl.where(v > edge, w, 0.0), axis=0) + ties * tl.exp(edge - top)
    top_p = tl.load(top_p_ptr)
    limit = tl.where(top_p >= 1.0, float("inf"), top_p * total)  # top_p 1: every token with a probability
    # Top-p over the KEEP largest (every value above the edge, and the edge itself, is among them):
    # a value is kept while the mass strictly more probable than it is below the limit.
    bv = _value(best_keys)
    bw = tl.where((best_keys != NO_KEY) & (bv >= edge), tl.exp(bv - top), 0.0)
    above = tl.sum(tl.where(bv[None, :] > bv[:, None], bw[None, :], 0.0), axis=1)
    kept = (bw > 0) & (above < limit)
    threshold = tl.min(tl.where(kept, bv, float("inf")), axis=0)
    if complete | (threshold > edge):
        race = valid & (v >= threshold) & (w > 0)
        cols = _column(keys)
        noise = tl.maximum(tl.load(noise_ptr + row * stride_n + cols, mask=race, other=1.0), NOISE_FLOOR)
        score = tl.where(race, v - tl.log(noise), -float("inf"))
        best = tl.max(score, axis=0)
        token = tl.min(tl.where(race & (score == best), cols, LOW), axis=0)
    else:
        _, best, token = _scan_ties(x_ptr, noise_ptr, row, V, stride_n, edge, top, True, threshold)
    token = tl.where(token == LOW, 0, token)  # an all -inf row: the first index, as the reference's NaN softmax
    _write_token(token_ptr, seen_ptr, cur_ptr, row, token, stride_t, stride_s, PENALTY, ADVANCE)


def launch_top_k_choice(
    logits: torch.Tensor,
    noise: torch.Tensor,
    token: torch.Tensor,
    eos: torch.Tensor,
    allow_eos: torch.Tensor,
    *,
    seen: torch.Tensor | None,
    penalty: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: int,
    cur: torch.Tensor | None,
) -> None:
    """``token_sampling.launch_sampled_choice`` for ``1 <= top_k <= MAX_TOP_K``, same arguments."""
    assert 1 <= top_k <= MAX_TOP_K, top_k
    rows, vocab = logits.shape
    k = min(top_k, vocab)
    keep = max(16, triton.next_power_of_2(k))
    block = max(MIN_BLOCK, keep, triton.next_power_of_2(triton.cdiv(vocab, MAX_CHUNKS)))
    chunks = triton.cdiv(vocab, block)
    device = logits.device
    x = torch.empty((rows, vocab), dtype=torch.float32, device=device)
    cand = torch.empty((rows, chunks, keep), dtype=torch.int64, device=device)
    seen_bytes = seen.view(torch.uint8) if seen is not None else x  # any tensor where unused
    pdl = launch_pdl(device)
    _chunk_candidates[(rows, chunks)](
        logits, seen_bytes, penalty, eos, allow_eos.view(torch.uint8), temperature, x, cand, vocab, chunks,
        logits.stride(0), seen_bytes.stride(0),
        PENALTY=seen is not None, EOS=eos.numel(), BLOCK=block, KEEP=keep, HAS_TOPK=HAS_TOPK, PDL=pdl,
        num_warps=4, launch_pdl=pdl,
    )
    _sample_candidates[(rows,)](
        x, cand, noise, top_p, token, seen_bytes, cur if cur is not None else token, k, vocab, chunks,
        noise.stride(0), token.stride(0), seen_bytes.stride(0),
        KEEP=keep, CHUNKS_P2=triton.next_power_of_2(chunks), HAS_TOPK=HAS_TOPK, PENALTY=seen is not None,
        ADVANCE=cur is not None, PDL=pdl, num_warps=8, launch_pdl=pdl,
    )
