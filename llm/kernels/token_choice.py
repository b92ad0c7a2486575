"""Triton: a decode step's greedy token choice and its state updates, in two launches.

After the LM head a greedy step ran ~15 eager PyTorch kernels of 1-5 us on 260 KB of logits, none
of which can start before the one before it has ended (no programmatic dependent launch): the
eos suppression (``index_select``, ``where``, ``index_copy``), ``first_argmax``'s pad, two
reductions, gather and index arithmetic, the token copy, ``seen.scatter_`` and ``cur.add_``; ~25 us
of every step in run 21's step profile (H200, ChatGLM3-6B shape, PDL off), for bf16 and INT8 alike.
Here:

- ``_chunk_best`` (one program per row and ``BLOCK`` columns) applies the repetition penalty and
  the eos suppression and finds the chunk's first maximum;
- ``_pick_token`` (one program per row) finds the first chunk holding the row's maximum, writes
  the token into the graph's ``(B, 1)`` token buffer, marks it seen for the penalty, and moves the
  graph's cache slot ``cur`` on by one.

The math is ``llm.fast_decode.sampling.choose_tokens``'s greedy branch: the penalty in float32 as
``torch.where(logits > 0, logits / p, logits * p)`` on seen tokens, eos ids at ``-inf`` while
``allow_eos`` is false, then ``torch.argmax`` (NaN counts as the maximum, ties go to the first
index). This module imports Triton; ``llm.kernels.token_choice_op`` says when it runs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from llm.kernels.grid_dependency import wait_for_inputs
from llm.kernels.pdl import launch_pdl

BLOCK = 2048  # columns per program: 32 chunks of a 65,024-token vocabulary
NONE = tl.constexpr(2**31 - 1)  # an index past every vocabulary: "no column here" (a jit global must be constexpr)


@triton.jit
def _first_maximum(values, index, ok):
    """(maximum, first index holding it) of ``values`` where ``ok``, NaN counting as the maximum."""
    nan = (values != values) & ok
    has_nan = tl.max(nan.to(tl.int32), axis=0) > 0
    top = tl.max(tl.where(nan | ~ok, -float("inf"), values), axis=0)
    hit = tl.where(has_nan, nan, (values == top) & ok)
    first = tl.min(tl.where(hit, index, NONE), axis=0)
    return tl.where(has_nan, float("nan"), top), first


@triton.jit
def _penalised_logits(logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, row, cols, ok, stride_l, stride_s,
                      PENALTY: tl.constexpr, EOS: tl.constexpr):
    """A chunk of a row's logits in float32 with ``choose_tokens``' first two steps: the repetition
    penalty on seen tokens, and eos ids at ``-inf`` while ``allow_eos`` is false."""
    v = tl.load(logits_ptr + row * stride_l + cols, mask=ok, other=-float("inf")).to(tl.float32)
    if PENALTY:
        seen = tl.load(seen_ptr + row * stride_s + cols, mask=ok, other=0) != 0
        p = tl.load(penalty_ptr)
        v = tl.where(seen, tl.where(v > 0, v / p, v * p), v)
    eos = tl.load(eos_ptr + tl.arange(0, EOS))
    is_eos = tl.max((cols[:, None] == eos[None, :]).to(tl.int32), axis=1) > 0
    return tl.where(is_eos & (tl.load(allow_ptr) == 0), -float("inf"), v)


@triton.jit
def _chunk_logits(logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, V, stride_l, stride_s,
                  PENALTY: tl.constexpr, EOS: tl.constexpr, BLOCK: tl.constexpr):
    """This program's chunk of its row (program ids: row, chunk of ``BLOCK`` columns): (row, chunk,
    columns, in range, ``_penalised_logits``); every token-choice kernel's first step."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    cols = chunk * BLOCK + tl.arange(0, BLOCK)
    ok = cols < V
    v = _penalised_logits(logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, row, cols, ok, stride_l, stride_s,
                          PENALTY, EOS)
    return row, chunk, cols, ok, v


@triton.jit
def _chunk_best(
    logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, best_ptr, where_ptr, V, CHUNKS, stride_l, stride_s,
    PENALTY: tl.constexpr, EOS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_inputs(PDL)
    row, chunk, cols, ok, v = _chunk_logits(logits_ptr, seen_ptr, penalty_ptr, eos_ptr, allow_ptr, V, stride_l,
                                            stride_s, PENALTY, EOS, BLOCK)
    best, first = _first_maximum(v, cols, ok)
    tl.store(best_ptr + row * CHUNKS + chunk, best)
    tl.store(where_ptr + row * CHUNKS + chunk, first)


@triton.jit
def _pick_token(
    best_ptr, where_ptr, token_ptr, seen_ptr, cur_ptr, CHUNKS, stride_t, stride_s,
    PENALTY: tl.constexpr, ADVANCE: tl.constexpr, BLOCK_C: tl.constexpr, PDL: tl.constexpr,
):
    wait_for_inputs(PDL)
    row = tl.program_id(0)
    c = tl.arange(0, BLOCK_C)
    ok = c < CHUNKS
    best = tl.load(best_ptr + row * CHUNKS + c, mask=ok, other=-float("inf"))
    where = tl.load(where_ptr + row * CHUNKS + c, mask=ok, other=NONE)
    _, first_chunk = _first_maximum(best, c, ok)
    token = tl.sum(tl.where(c == first_chunk, where, 0), axis=0)
    _write_token(token_ptr, seen_ptr, cur_ptr, row, token, stride_t, stride_s, PENALTY, ADVANCE)


@triton.jit
def _write_token(token_ptr, seen_ptr, cur_ptr, row, token, stride_t, stride_s, PENALTY: tl.constexpr,
                 ADVANCE: tl.constexpr):
    """A step's ending for one row: its token into the graph's ``(B, 1)`` buffer, marked seen for the
    penalty, and (row 0 only) the cache slot ``cur`` moved on by one."""
    tl.store(token_ptr + row * stride_t, token.to(tl.int64))
    if PENALTY:
        tl.store(seen_ptr + row * stride_s + token, 1)
    if ADVANCE:
        if row == 0:
            tl.store(cur_ptr, tl.load(cur_ptr) + 1)


def launch_greedy_choice(
    logits: torch.Tensor,
    token: torch.Tensor,
    eos: torch.Tensor,
    allow_eos: torch.Tensor,
    *,
    seen: torch.Tensor | None,
    penalty: torch.Tensor,
    cur: torch.Tensor | None,
) -> None:
    """Each row's greedy token of ``logits`` ``(B, V)`` (float32, unit last stride) into ``token``
    ``(B, 1)`` long; ``seen`` ``(B, V)`` bool: the penalty applied and the token marked; ``cur``
    (one-element long): moved on by one. ``eos`` holds a power-of-two count of ids (repeats fill it)."""
    rows, vocab = logits.shape
    chunks = triton.cdiv(vocab, BLOCK)
    best = torch.empty((rows, chunks), dtype=torch.float32, device=logits.device)
    where = torch.empty((rows, chunks), dtype=torch.int32, device=logits.device)
    seen_bytes = seen.view(torch.uint8) if seen is not None else where  # any tensor where unused
    pdl = launch_pdl(logits.device)
    _chunk_best[(rows, chunks)](
        logits, seen_bytes, penalty, eos, allow_eos.view(torch.uint8), best, where, vocab, chunks,
        logits.stride(0), seen_bytes.stride(0),
        PENALTY=seen is not None, EOS=eos.numel(), BLOCK=BLOCK, PDL=pdl, num_warps=4, launch_pdl=pdl,
    )
    _pick_token[(rows,)](
        best, where, token, seen_bytes, cur if cur is not None else token, chunks,
        token.stride(0), seen_bytes.stride(0),
        PENALTY=seen is not None, ADVANCE=cur is not None, BLOCK_C=max(16, triton.next_power_of_2(chunks)), PDL=pdl,
        num_warps=1, launch_pdl=pdl,
    )
