"""Triton: a decode step's sampled token choice (temperature, top-k, top-p) without sorting the vocabulary.

``sampling.choose_tokens`` samples in the order of transformers' processors (repetition penalty,
eos suppression, temperature, top-k, top-p); its top-k is ``torch.topk`` and its top-p sorts the
whole row, which with a dozen more eager kernels cost ~160 us of every decode step on an H100 (run
29, ChatGLM3-6B shape, temperature 0.8 and top_p 0.8 against greedy: bf16 228.8 -> 220.6 tok/s,
INT8 390.9 -> 367.5, INT4 506.8 -> 461.8). Neither needs an order: top-k needs the k-th largest
value, top-p the least probable token kept; then an exponential race (argmax of ``p / E``, ``E ~
Exp(1)``, as ``choose_tokens`` draws it) over the tokens kept.

Both edges are found by a radix select instead of a sort. Token ``i``'s distance below the row's
maximum, ``d = max - x`` (a non-negative float32, so its bits order as integers), is cut into
``LEVEL_BITS`` from the top. Each level counts (top-k) or weighs by ``exp(-d)`` (top-p, over the
top-k tokens) the tokens still in play into one bin per bit pattern, a one-hot sum per program of
``BLOCK`` columns (no atomics: deterministic); the next level's programs each scan those bins
alike and keep the last bin whose count or mass before it, plus the bins above it at earlier
levels, is below ``k`` or ``top_p`` of the total. After 31 bits an edge is exact. Tokens are kept
as transformers keeps them: every token at or above the k-th largest value (ties included), then
each while the mass of those more probable is below ``top_p``. The one difference is at exact
ties on the top-p edge, kept whole here, where a sort keeps an arbitrary part of them.

Launches per step: the scaled logits and chunk maxima, five levels per edge, the race, and
``token_choice._pick_token``. The noise is drawn by PyTorch (``exponential_``: graph-safe, seeded
as before). Each level walks the whole row again: on an H100 (run 30, 65,024 tokens, top_p 0.8)
one row took 103.3 us against PyTorch's 151.1, but 16 rows 448.5 against 373.2, and top-k 50 +
top-p 170.1 against 220.9. So ``token_choice_op.sampled_choice`` sends top-k up to 128 to
``token_top_k`` (35.4 us) and uses this module only for top-p alone, or a larger top-k, on one
row. This module imports Triton; ``llm.kernels.token_choice_op`` says when it can run.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm.kernels.grid_dependency import wait_for_inputs
from llm.kernels.pdl import launch_pdl
from llm.kernels.token_choice import _chunk_logits, _first_maximum, _pick_token

BLOCK = 1024  # columns per program: 64 chunks of a 65,024-token vocabulary
LEVEL_BITS = (7, 6, 6, 6, 6)  # d's 31 value bits (sign excluded), from the top
BINS = 128  # bins per program and level (the widest level's), the histogram's row
SUB = 64  # columns per step of the one-hot sums: a (SUB, 128) float32 accumulator, 32 registers a thread at 8 warps
ALL_KEYS = tl.constexpr(0x7FFFFFFF)  # a k-th key past every key: no top-k (a jit global must be constexpr)
NOISE_FLOOR = tl.constexpr(1e-10)  # choose_tokens clamps its exponential noise to this


@triton.jit
def _scaled_chunk(logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, temperature_ptr, x_ptr, V, stride_l, stride_s,
                  PENALTY: tl.constexpr, EOS: tl.constexpr, BLOCK: tl.constexpr):
    """``_chunk_logits`` with the temperature after the penalty and eos suppression (``choose_tokens``'
    order), NaN counted as ``-inf`` and ``-0.0`` as ``0.0`` (one value), stored into the sampled
    kernels' scaled row ``x``: (row, chunk, columns, in range, values)."""
    row, chunk, cols, ok, v = _chunk_logits(logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, V, stride_l,
                                            stride_s, PENALTY, EOS, BLOCK)
    v = v / tl.load(temperature_ptr)
    v = tl.where(v != v, -float("inf"), tl.where(v == 0, 0.0, v))
    tl.store(x_ptr + row * V + cols, v, mask=ok)
    return row, chunk, cols, ok, v


@triton.jit
def _scaled_maxima(
    logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, temperature_ptr, x_ptr, max_ptr,
    V, CHUNKS, stride_l, stride_s,
    PENALTY: tl.constexpr, EOS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    """The scaled row into ``x`` (``_scaled_chunk``) and each chunk's maximum."""
    wait_for_inputs(PDL)
    row, chunk, cols, ok, v = _scaled_chunk(logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, temperature_ptr,
                                            x_ptr, V, stride_l, stride_s, PENALTY, EOS, BLOCK)
    tl.store(max_ptr + row * CHUNKS + chunk, tl.max(v, axis=0))


@triton.jit
def _row_maximum(max_ptr, row, CHUNKS, BLOCK_C: tl.constexpr):
    c = tl.arange(0, BLOCK_C)
    return tl.max(tl.load(max_ptr + row * CHUNKS + c, mask=c < CHUNKS, other=-float("inf")), axis=0)


@triton.jit
def _key_and_weight(x_ptr, row, cols, ok, V, top):
    """Each column's distance below the row's maximum ``top`` as orderable bits, and
    ``exp(-distance)``, its unnormalised probability (0 where it has none: ``-inf`` logits, an all
    ``-inf`` row)."""
    x = tl.load(x_ptr + row * V + cols, mask=ok, other=-float("inf"))
    live = ok & (x > -float("inf"))
    d = tl.where(live, top - x, float("inf"))
    return d.to(tl.int32, bitcast=True), tl.where(live, tl.exp(-d), 0.0), x


@triton.jit
def _enter_stage(
    hist_ptr, prefix_ptr, above_ptr, kth_ptr, total_ptr, top_p_ptr, top_k, row, chunk, ROWS, CHUNKS,
    STAGE: tl.constexpr, LEVEL: tl.constexpr, PREV_LEVEL: tl.constexpr, PREV_COUNTING: tl.constexpr,
    READ_KTH: tl.constexpr, STATE: tl.constexpr, PREV_BITS: tl.constexpr, BINS: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """(prefix, above, k-th key) entering stage ``STAGE``: the edge's bits fixed by the earlier levels
    of this select, the count or mass of the tokens above them, and top-k's edge. Each program of a
    row scans the previous stage's bins from the same sums in the same order, so all agree; chunk 0
    stores what later stages read (the state per stage, top-k's edge, top-p's total)."""
    prefix = tl.zeros((), dtype=tl.int32)
    above = tl.zeros((), dtype=tl.float32)
    kth = tl.zeros((), dtype=tl.int32) + ALL_KEYS
    if STAGE > 0:
        if PREV_LEVEL > 0:
            prefix = tl.load(prefix_ptr + row * STATE + STAGE - 1)
            above = tl.load(above_ptr + row * STATE + STAGE - 1)
        c = tl.arange(0, BLOCK_C)
        b = tl.arange(0, 1 << PREV_BITS)
        base = hist_ptr + ((STAGE - 1) * ROWS + row) * CHUNKS * BINS
        mass = tl.sum(tl.load(base + c[:, None] * BINS + b[None, :], mask=(c < CHUNKS)[:, None], other=0.0), axis=0)
        if PREV_COUNTING:
            limit = top_k + 0.0
        else:
            if PREV_LEVEL == 0:  # top-p's first level saw every token it weighs: its bins add up to the total
                total = tl.sum(mass, axis=0)
                if chunk == 0:
                    tl.store(total_ptr + row, total)
            else:
                total = tl.load(total_ptr + row)
            top_p = tl.load(top_p_ptr)
            limit = tl.where(top_p >= 1.0, float("inf"), top_p * total)  # top_p 1: every token with a probability
        before = tl.cumsum(mass, axis=0) - mass
        edge = tl.maximum(tl.max(tl.where((mass > 0) & (above + before < limit), b, -1), axis=0), 0)
        above = above + tl.sum(tl.where(b < edge, mass, 0.0), axis=0)
        prefix = (prefix << PREV_BITS) | edge
        if LEVEL == 0:  # the top-k select's last level just ended: its edge is the k-th key, top-p starts afresh
            kth = prefix
            prefix = tl.zeros((), dtype=tl.int32)
            above = tl.zeros((), dtype=tl.float32)
            if chunk == 0:
                tl.store(kth_ptr + row, kth)
        elif chunk == 0:
            tl.store(prefix_ptr + row * STATE + STAGE, prefix)
            tl.store(above_ptr + row * STATE + STAGE, above)
    if READ_KTH:
        kth = tl.load(kth_ptr + row)
    return prefix, above, kth


@triton.jit
def _select_level(
    x_ptr, max_ptr, hist_ptr, prefix_ptr, above_ptr, kth_ptr, total_ptr, top_p_ptr, top_k, V, ROWS, CHUNKS,
    STAGE: tl.constexpr, LEVEL: tl.constexpr, PREV_LEVEL: tl.constexpr, COUNTING: tl.constexpr,
    PREV_COUNTING: tl.constexpr, READ_KTH: tl.constexpr, STATE: tl.constexpr, SHIFT: tl.constexpr,
    BITS: tl.constexpr, PREV_BITS: tl.constexpr, BINS: tl.constexpr, BLOCK: tl.constexpr, SUB: tl.constexpr,
    BLOCK_C: tl.constexpr, PDL: tl.constexpr,
):
    """One level of a select: this chunk's tokens still in play (their distance's bits above ``SHIFT +
    BITS`` equal to the edge's so far; for top-p, only top-k's tokens) counted (``COUNTING``) or
    weighed, per bit pattern of the next ``BITS``. The one-hot sums build up in a ``(SUB, bins)``
    accumulator and are reduced once at the end."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    prefix, _above, kth = _enter_stage(hist_ptr, prefix_ptr, above_ptr, kth_ptr, total_ptr, top_p_ptr, top_k, row,
                                       chunk, ROWS, CHUNKS, STAGE, LEVEL, PREV_LEVEL, PREV_COUNTING, READ_KTH, STATE,
                                       PREV_BITS, BINS, BLOCK_C)
    top = _row_maximum(max_ptr, row, CHUNKS, BLOCK_C)
    b = tl.arange(0, 1 << BITS)
    acc = tl.zeros((SUB, 1 << BITS), dtype=tl.float32)
    for start in range(0, BLOCK, SUB):
        cols = chunk * BLOCK + start + tl.arange(0, SUB)
        ok = cols < V
        key, weight, _x = _key_and_weight(x_ptr, row, cols, ok, V, top)
        if COUNTING:
            in_play = ok
            weight = tl.where(ok, 1.0, 0.0)
        else:
            in_play = (weight > 0) & (key <= kth)
        in_play = in_play & ((key >> (SHIFT + BITS)) == prefix)
        bins = (key >> SHIFT) & ((1 << BITS) - 1)
        acc += tl.where((bins[:, None] == b[None, :]) & in_play[:, None], weight[:, None], 0.0)
    tl.store(hist_ptr + ((STAGE * ROWS + row) * CHUNKS + chunk) * BINS + b, tl.sum(acc, axis=0))


@triton.jit
def _race(
    x_ptr, noise_ptr, max_ptr, hist_ptr, prefix_ptr, above_ptr, kth_ptr, total_ptr, top_p_ptr, best_ptr, where_ptr,
    V, ROWS, CHUNKS, stride_n,
    STAGE: tl.constexpr, LEVELS: tl.constexpr, STATE: tl.constexpr, PREV_BITS: tl.constexpr, BINS: tl.constexpr,
    BLOCK: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr,
):
    """The exponential race over the tokens kept (distance at or below top-p's edge, which lies within
    top-k's): ``x - log E``, whose argmax is ``p / E``'s; each chunk's first best, for ``_pick_token``."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    edge, _above, _kth = _enter_stage(hist_ptr, prefix_ptr, above_ptr, kth_ptr, total_ptr, top_p_ptr, 0, row, chunk,
                                      ROWS, CHUNKS, STAGE, LEVELS, LEVELS - 1, False, False, STATE, PREV_BITS, BINS,
                                      BLOCK_C)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = cols < V
    key, weight, x = _key_and_weight(x_ptr, row, cols, ok, V, _row_maximum(max_ptr, row, CHUNKS, BLOCK_C))
    noise = tl.maximum(tl.load(noise_ptr + row * stride_n + cols, mask=ok, other=1.0), NOISE_FLOOR)
    score = tl.where((key <= edge) & (weight > 0), x - tl.log(noise), -float("inf"))
    best, first = _first_maximum(score, cols, ok)
    tl.store(best_ptr + row * CHUNKS + chunk, best)
    tl.store(where_ptr + row * CHUNKS + chunk, first)


def launch_sampled_choice(
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
    top_k: int | None,
    cur: torch.Tensor | None,
) -> None:
    """Each row's sampled token of ``logits`` ``(B, V)`` (float32, unit last stride) into ``token``
    ``(B, 1)`` long, racing ``noise`` ``(B, V)`` (``Exp(1)`` draws); ``seen``, ``penalty``, ``eos``,
    ``allow_eos`` and ``cur`` as ``launch_greedy_choice`` takes them; ``temperature`` and ``top_p``
    one-element float32 tensors (the decode graph's, set per call), ``top_k`` None or 0 for none."""
    rows, vocab = logits.shape
    chunks = triton.cdiv(vocab, BLOCK)
    levels = len(LEVEL_BITS)
    selects = [False] + ([True] if top_k else [])  # counting? top-k's select first, then top-p's
    selects.reverse()
    stages = levels * len(selects)
    device = logits.device
    x = torch.empty((rows, vocab), dtype=torch.float32, device=device)
    maxima = torch.empty((rows, chunks), dtype=torch.float32, device=device)
    hist = torch.empty((stages, rows, chunks, BINS), dtype=torch.float32, device=device)
    prefix = torch.empty((rows, stages + 1), dtype=torch.int32, device=device)
    above = torch.empty((rows, stages + 1), dtype=torch.float32, device=device)
    kth = torch.empty((rows,), dtype=torch.int32, device=device)
    total = torch.empty((rows,), dtype=torch.float32, device=device)
    best = torch.empty((rows, chunks), dtype=torch.float32, device=device)
    where = torch.empty((rows, chunks), dtype=torch.int32, device=device)
    seen_bytes = seen.view(torch.uint8) if seen is not None else where  # any tensor where unused
    block_c = max(16, triton.next_power_of_2(chunks))
    pdl = launch_pdl(device)
    grid = (rows, chunks)
    _scaled_maxima[grid](
        logits, seen_bytes, penalty, eos, allow_eos.view(torch.uint8), temperature, x, maxima, vocab, chunks,
        logits.stride(0), seen_bytes.stride(0),
        PENALTY=seen is not None, EOS=eos.numel(), BLOCK=BLOCK, PDL=pdl, num_warps=4, launch_pdl=pdl,
    )
    stage, prev_bits, prev_counting = 0, 0, False
    for counting in selects:
        shift = 31
        for level, bits in enumerate(LEVEL_BITS):
            shift -= bits
            _select_level[grid](
                x, maxima, hist, prefix, above, kth, total, top_p, int(top_k or 0), vocab, rows, chunks,
                STAGE=stage, LEVEL=level, PREV_LEVEL=levels - 1 if level == 0 else level - 1, COUNTING=counting,
                PREV_COUNTING=prev_counting, READ_KTH=bool(top_k) and not counting and level > 0, STATE=stages + 1,
                SHIFT=shift, BITS=bits, PREV_BITS=prev_bits, BINS=BINS, BLOCK=BLOCK, SUB=SUB, BLOCK_C=block_c,
                PDL=pdl, num_warps=8, launch_pdl=pdl,
            )
            stage, prev_bits, prev_counting = stage + 1, bits, counting
    _race[grid](
        x, noise, maxima, hist, prefix, above, kth, total, top_p, best, where, vocab, rows, chunks, noise.stride(0),
        STAGE=stage, LEVELS=levels, STATE=stages + 1, PREV_BITS=prev_bits, BINS=BINS, BLOCK=BLOCK, BLOCK_C=block_c,
        PDL=pdl, num_warps=4, launch_pdl=pdl,
    )
    _pick_token[(rows,)](
        best, where, token, seen_bytes, cur if cur is not None else token, chunks,
        token.stride(0), seen_bytes.stride(0),
        PENALTY=seen is not None, ADVANCE=cur is not None, BLOCK_C=block_c, PDL=pdl, num_warps=1, launch_pdl=pdl,
    )
