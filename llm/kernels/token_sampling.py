"""Triton: a decode step's top-p sampled token choice without sorting the vocabulary.

``sampling.choose_tokens`` samples a token in the order of transformers' processors (repetition
penalty, eos suppression, temperature, top-p) and its top-p sorts the whole row: with a dozen more
eager kernels that cost ~160 us of every decode step on an H100 (run 29, ChatGLM3-6B shape: bf16
228.8 -> 220.6 tok/s, INT8 390.9 -> 367.5, INT4 506.8 -> 461.8 with the settings' default
temperature 0.8 and top_p 0.8 against greedy), more than the greedy choice's ~25 us before its
kernel. Sorting is more than top-p needs: it needs the nucleus's edge, the least probable token
kept, and an exponential race (argmax of ``p / E``, ``E ~ Exp(1)``, as ``choose_tokens`` draws it)
over the tokens at or above that edge.

The edge is found as a radix select over the probability mass instead of a sort. Token ``i``'s
distance below the row's maximum, ``d = max - x`` (a non-negative float32, so its bits order as
integers), is cut into ``LEVEL_BITS`` from the top; each level weighs the tokens still in play by
their probability into one bin per bit pattern (a one-hot sum per program of ``BLOCK`` columns, no
atomics: deterministic), and the next level's programs each scan those bins the same way: keep the
last bin whose mass before it, plus the mass of the bins above it at earlier levels, is below
``top_p``. After 31 bits the edge is exact. Tokens are kept as transformers keeps them (a token
stays while the mass of the tokens more probable than it is below ``top_p``); the one difference
is at exact ties on the edge, all of which are kept here, where a sort keeps an arbitrary part.

Launches per step: the scaled logits and their chunk maxima and sums, five levels, the race, and
``token_choice._pick_token``; about eight small kernels against PyTorch's sort and its dozen.
The noise is drawn by PyTorch (``exponential_``, graph-safe, seeded as before). This module imports
Triton; ``llm.kernels.token_choice_op`` says when it runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm.kernels.grid_dependency import wait_for_inputs
from llm.kernels.pdl import launch_pdl
from llm.kernels.token_choice import _first_maximum, _pick_token

BLOCK = 1024  # columns per program: 64 chunks of a 65,024-token vocabulary, each program a one-hot sum
LEVEL_BITS = (7, 6, 6, 6, 6)  # d's 31 value bits (sign excluded), from the top
BINS = 128  # bins per program and level (the widest level's), the histogram's row
SUB = 64  # columns per one-hot sum: (SUB, 128) float32 over 8 warps, 32 registers a thread
NOISE_FLOOR = tl.constexpr(1e-10)  # choose_tokens clamps its exponential noise to this (a jit global: constexpr)


@triton.jit
def _scaled_partials(
    logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, temperature_ptr, x_ptr, max_ptr, sum_ptr,
    V, CHUNKS, stride_l, stride_s,
    PENALTY: tl.constexpr, EOS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    """Penalty, eos suppression and temperature (``choose_tokens``' order) into ``x``; each chunk's
    maximum and its sum of ``exp(x - maximum)``. NaN logits count as ``-inf``."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = cols < V
    v = tl.load(logits_ptr + row * stride_l + cols, mask=ok, other=-float("inf")).to(tl.float32)
    if PENALTY:
        seen = tl.load(seen_ptr + row * stride_s + cols, mask=ok, other=0) != 0
        p = tl.load(penalty_ptr)
        v = tl.where(seen, tl.where(v > 0, v / p, v * p), v)
    eos = tl.load(eos_ptr + tl.arange(0, EOS))
    is_eos = tl.max((cols[:, None] == eos[None, :]).to(tl.int32), axis=1) > 0
    v = tl.where(is_eos & (tl.load(allow_ptr) == 0), -float("inf"), v)
    v = v / tl.load(temperature_ptr)
    v = tl.where(v != v, -float("inf"), v)
    tl.store(x_ptr + row * V + cols, v, mask=ok)
    top = tl.max(v, axis=0)
    live = ok & (v > -float("inf"))
    total = tl.sum(tl.where(live, tl.exp(v - tl.where(live, top, 0.0)), 0.0), axis=0)
    tl.store(max_ptr + row * CHUNKS + chunk, top)
    tl.store(sum_ptr + row * CHUNKS + chunk, total)


@triton.jit
def _row_maximum_and_sum(max_ptr, sum_ptr, row, CHUNKS, BLOCK_C: tl.constexpr):
    """The row's maximum and softmax denominator from its chunks' (every program the same way)."""
    c = tl.arange(0, BLOCK_C)
    ok = c < CHUNKS
    tops = tl.load(max_ptr + row * CHUNKS + c, mask=ok, other=-float("inf"))
    sums = tl.load(sum_ptr + row * CHUNKS + c, mask=ok, other=0.0)
    top = tl.max(tops, axis=0)
    live = tops > -float("inf")
    return top, tl.sum(tl.where(live, sums * tl.exp(tops - tl.where(live, top, 0.0)), 0.0), axis=0)


@triton.jit
def _distance_and_mass(x_ptr, row, cols, ok, V, top, total):
    """Each column's distance below the maximum as orderable bits, and its probability (0 where it
    has none: ``-inf`` logits, an all ``-inf`` row)."""
    x = tl.load(x_ptr + row * V + cols, mask=ok, other=-float("inf"))
    live = ok & (x > -float("inf"))
    d = tl.where(live, top - x, float("inf"))
    p = tl.where(live, tl.exp(-d) / total, 0.0)
    return d.to(tl.int32, bitcast=True), p


@triton.jit
def _enter_level(
    hist_ptr, prefix_ptr, above_ptr, top_p_ptr, row, chunk, ROWS, CHUNKS,
    LEVEL: tl.constexpr, STATE: tl.constexpr, PREV_BITS: tl.constexpr, BINS: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """The bits of the nucleus's edge fixed before ``LEVEL`` and the mass of the tokens above them:
    the state entering level ``LEVEL - 1`` (``STATE`` entries per row, stored by that level's chunk 0)
    and its bins, scanned; chunk 0 stores the result for the level after. Every program of a row
    scans the same sums in the same order, so all agree."""
    prefix = tl.zeros((), dtype=tl.int32)
    above = tl.zeros((), dtype=tl.float32)
    if LEVEL > 0:
        if LEVEL > 1:
            prefix = tl.load(prefix_ptr + row * STATE + LEVEL - 1)
            above = tl.load(above_ptr + row * STATE + LEVEL - 1)
        c = tl.arange(0, BLOCK_C)
        b = tl.arange(0, 1 << PREV_BITS)
        base = hist_ptr + ((LEVEL - 1) * ROWS + row) * CHUNKS * BINS
        mass = tl.sum(tl.load(base + c[:, None] * BINS + b[None, :], mask=(c < CHUNKS)[:, None], other=0.0), axis=0)
        before = tl.cumsum(mass, axis=0) - mass
        top_p = tl.load(top_p_ptr)
        limit = tl.where(top_p >= 1.0, float("inf"), top_p)  # top_p 1: every token with a probability
        edge = tl.maximum(tl.max(tl.where((mass > 0) & (above + before < limit), b, -1), axis=0), 0)
        above = above + tl.sum(tl.where(b < edge, mass, 0.0), axis=0)
        prefix = (prefix << PREV_BITS) | edge
        if chunk == 0:
            tl.store(prefix_ptr + row * STATE + LEVEL, prefix)
            tl.store(above_ptr + row * STATE + LEVEL, above)
    return prefix, above


@triton.jit
def _level_mass(
    x_ptr, max_ptr, sum_ptr, hist_ptr, prefix_ptr, above_ptr, top_p_ptr, V, ROWS, CHUNKS,
    LEVEL: tl.constexpr, STATE: tl.constexpr, SHIFT: tl.constexpr, BITS: tl.constexpr, PREV_BITS: tl.constexpr,
    BINS: tl.constexpr, BLOCK: tl.constexpr, SUB: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr,
):
    """Level ``LEVEL``: the probability mass of this chunk's tokens still in play (their distance's
    bits above ``SHIFT + BITS`` equal to the edge's so far) per bit pattern of the next ``BITS``, as
    a one-hot sum over ``SUB`` columns at a time (a piece with no token in play is skipped: past
    level 0 most are)."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    prefix, _ = _enter_level(hist_ptr, prefix_ptr, above_ptr, top_p_ptr, row, chunk, ROWS, CHUNKS,
                             LEVEL, STATE, PREV_BITS, BINS, BLOCK_C)
    top, total = _row_maximum_and_sum(max_ptr, sum_ptr, row, CHUNKS, BLOCK_C)
    b = tl.arange(0, 1 << BITS)
    mass = tl.zeros((1 << BITS,), dtype=tl.float32)
    for start in range(0, BLOCK, SUB):
        cols = chunk * BLOCK + start + tl.arange(0, SUB)
        ok = cols < V
        key, p = _distance_and_mass(x_ptr, row, cols, ok, V, top, total)
        in_play = ((key >> (SHIFT + BITS)) == prefix) & (p > 0)
        if tl.max(in_play.to(tl.int32), axis=0) > 0:
            bins = (key >> SHIFT) & ((1 << BITS) - 1)
            hit = (bins[:, None] == b[None, :]) & in_play[:, None]
            mass += tl.sum(tl.where(hit, p[:, None], 0.0), axis=0)
    tl.store(hist_ptr + ((LEVEL * ROWS + row) * CHUNKS + chunk) * BINS + b, mass)


@triton.jit
def _race(
    x_ptr, noise_ptr, max_ptr, sum_ptr, hist_ptr, prefix_ptr, above_ptr, top_p_ptr, best_ptr, where_ptr,
    V, ROWS, CHUNKS, stride_n,
    LEVELS: tl.constexpr, PREV_BITS: tl.constexpr, BINS: tl.constexpr, BLOCK: tl.constexpr,
    BLOCK_C: tl.constexpr, PDL: tl.constexpr,
):
    """The exponential race over the nucleus (distance at or below the edge): ``x - log E``, whose
    argmax is ``p / E``'s; each chunk's first best, as ``_pick_token`` reads them."""
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    edge, _ = _enter_level(hist_ptr, prefix_ptr, above_ptr, top_p_ptr, row, chunk, ROWS, CHUNKS,
                           LEVELS, LEVELS + 1, PREV_BITS, BINS, BLOCK_C)
    top, total = _row_maximum_and_sum(max_ptr, sum_ptr, row, CHUNKS, BLOCK_C)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = cols < V
    key, p = _distance_and_mass(x_ptr, row, cols, ok, V, top, total)
    noise = tl.maximum(tl.load(noise_ptr + row * stride_n + cols, mask=ok, other=1.0), NOISE_FLOOR)
    x = tl.load(x_ptr + row * V + cols, mask=ok, other=-float("inf"))
    score = tl.where((key <= edge) & (p > 0), x - tl.log(noise), -float("inf"))
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
    cur: torch.Tensor | None,
) -> None:
    """Each row's top-p sampled token of ``logits`` ``(B, V)`` (float32, unit last stride) into
    ``token`` ``(B, 1)`` long, racing ``noise`` ``(B, V)`` (``Exp(1)`` draws); ``seen``, ``penalty``,
    ``eos``, ``allow_eos`` and ``cur`` as ``launch_greedy_choice`` takes them; ``temperature`` and
    ``top_p`` one-element float32 tensors (the decode graph's, set per call)."""
    rows, vocab = logits.shape
    chunks = triton.cdiv(vocab, BLOCK)
    levels = len(LEVEL_BITS)
    device = logits.device
    x = torch.empty((rows, vocab), dtype=torch.float32, device=device)
    maxima = torch.empty((rows, chunks), dtype=torch.float32, device=device)
    sums = torch.empty((rows, chunks), dtype=torch.float32, device=device)
    hist = torch.empty((levels, rows, chunks, BINS), dtype=torch.float32, device=device)
    prefix = torch.empty((rows, levels + 1), dtype=torch.int32, device=device)
    above = torch.empty((rows, levels + 1), dtype=torch.float32, device=device)
    best = torch.empty((rows, chunks), dtype=torch.float32, device=device)
    where = torch.empty((rows, chunks), dtype=torch.int32, device=device)
    seen_bytes = seen.view(torch.uint8) if seen is not None else where  # any tensor where unused
    block_c = max(16, triton.next_power_of_2(chunks))
    pdl = launch_pdl(device)
    grid = (rows, chunks)
    _scaled_partials[grid](
        logits, seen_bytes, penalty, eos, allow_eos.view(torch.uint8), temperature, x, maxima, sums, vocab, chunks,
        logits.stride(0), seen_bytes.stride(0),
        PENALTY=seen is not None, EOS=eos.numel(), BLOCK=BLOCK, PDL=pdl, num_warps=4, launch_pdl=pdl,
    )
    shift, prev_bits = 31, 0
    for level, bits in enumerate(LEVEL_BITS):
        shift -= bits
        _level_mass[grid](
            x, maxima, sums, hist, prefix, above, top_p, vocab, rows, chunks,
            LEVEL=level, STATE=levels + 1, SHIFT=shift, BITS=bits, PREV_BITS=prev_bits, BINS=BINS, BLOCK=BLOCK,
            SUB=SUB, BLOCK_C=block_c, PDL=pdl, num_warps=8, launch_pdl=pdl,
        )
        prev_bits = bits
    _race[grid](
        x, noise, maxima, sums, hist, prefix, above, top_p, best, where, vocab, rows, chunks, noise.stride(0),
        LEVELS=levels, PREV_BITS=prev_bits, BINS=BINS, BLOCK=BLOCK, BLOCK_C=block_c, PDL=pdl, num_warps=4,
        launch_pdl=pdl,
    )
    _pick_token[(rows,)](
        best, where, token, seen_bytes, cur if cur is not None else token, chunks,
        token.stride(0), seen_bytes.stride(0),
        PENALTY=seen is not None, ADVANCE=cur is not None, BLOCK_C=block_c, PDL=pdl, num_warps=1, launch_pdl=pdl,
    )
