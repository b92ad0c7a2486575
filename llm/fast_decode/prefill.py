"""The prompt pass of the decode graph: one CUDA graph per prompt-length bucket.

Run eagerly, the prompt pass of a 6B model launches its kernels from Python for ~30 ms however
short the prompt (the GPU needs ~5 ms for 64 tokens): most of the time to first token, and
its run-to-run noise. Prompts of up to ``PREFILL_GRAPH_MAX_TOKENS`` (batch x bucket) therefore
run as a replay of the model's own (uncompiled) forward captured for a bucket of padded length:
the prompt is padded on the right to the next power of two (at least ``MIN_PREFILL_BUCKET``),
the padding rows only write cache positions that the first decode steps overwrite before any
token attends to them, and the logits are taken at the last real position. Longer prompts
are compute-bound, so they keep the eager pass. With a P-tuning prefix the prompt starts at
cache slot ``P``, after the prefix (``llm.fast_decode.prefix``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from llm.fast_decode.attention import decode_forward, packs, swapped
from llm.fast_decode.cuda_graphs import capture_graph, warm_up_on_side_stream
from llm.fast_decode.prefix import prompt_mask, write_prefix
from llm.fast_decode.state import PREFILL_GRAPH, FastDecodeOptions, FastDecodeState, cache_kwarg, fast_decode_state

if TYPE_CHECKING:
    from llm.fast_decode.decode_graph import DecodeGraph

logger = logging.getLogger(__name__)

MIN_PREFILL_BUCKET = 64
PREFILL_GRAPH_MAX_TOKENS = 4096


@dataclass
class PrefillGraph:
    """Static inputs of one prompt-length bucket and the graph of the prompt pass over them."""

    ids: torch.Tensor  # (B, T) the prompt, right-padded to the bucket
    positions: torch.Tensor  # (B, T)
    mask: torch.Tensor  # (B, 1, T, P + T) (packed attention, else L): which cache slots each prompt position sees
    keep: torch.Tensor  # (1,) index of the last real prompt position
    length: torch.Tensor  # () prefix + real prompt length: where the cache continues writing
    prefix: int = 0  # slots [0, prefix) hold the P-tuning prefix; the prompt is written after them
    logits: torch.Tensor | None = None  # (B, V) float, output of the last replay
    graph: Any = None


def prompt_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded prompt: 0 at each row's first real token (padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def prefill_bucket(batch: int, prompt: int, cache_length: int) -> int | None:
    """The padded length of a captured prompt pass, or None: eager (too long for a graph)."""
    bucket = max(MIN_PREFILL_BUCKET, 1 << (prompt - 1).bit_length())
    if bucket > cache_length or batch * bucket > PREFILL_GRAPH_MAX_TOKENS:
        return None
    return bucket


def _prefill_body(model: Any, g: DecodeGraph, p: PrefillGraph) -> None:
    layers = g.cache.layers
    for layer in layers:
        layer.cumulative_length.fill_(p.prefix)
    # As in the decode step: packed attention (K/V narrowed to the mask's span of the cache), one q/k/v
    # GEMM per layer (run 19, 6B, bucket 64: q, k and v took 14.3 + 5.0 + 5.0 us, plus split-K sums) and
    # the rotary + cache writes as one kernel (``attention_step``, from slot ``g.start``); and each
    # RMSNorm and SwiGLU as one kernel each (``prompt_steps``; run 19: the norm's 7 eager kernels took ~1.2 ms
    # of the 9.1 ms pass)
    with decode_forward(g.config, g.fused, packed=g.packed, steps=g.steps), swapped(g.prompt_steps):
        out = model(input_ids=p.ids, position_ids=p.positions, attention_mask=p.mask,
                    **{cache_kwarg(model): g.cache}, use_cache=True, logits_to_keep=p.keep)
    p.logits = out.logits[:, -1, :].float()
    for layer in layers:
        layer.cumulative_length.copy_(p.length)


def _build_prefill(model: Any, g: DecodeGraph, batch: int, bucket: int) -> PrefillGraph:
    device, length = g.mask.device, g.mask.shape[-1]
    # The slots a prompt position can see (never past its own): packed attention narrows K/V to them
    span = g.prefix + bucket if packs(g.config, on=g.packed) else length
    return PrefillGraph(
        ids=torch.zeros((batch, bucket), dtype=torch.long, device=device),
        positions=torch.zeros((batch, bucket), dtype=torch.long, device=device),
        mask=torch.zeros((batch, 1, bucket, span), dtype=torch.bool, device=device),
        keep=torch.zeros(1, dtype=torch.long, device=device),
        length=torch.zeros((), dtype=torch.long, device=device),
        prefix=g.prefix,
    )


def _fill_prefill(p: PrefillGraph, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    batch, prompt = input_ids.shape
    bucket = p.ids.shape[1]
    p.ids.zero_()
    p.ids[:, :prompt] = input_ids
    positions = prompt_positions(attention_mask)
    p.positions[:, :prompt] = positions
    p.positions[:, prompt:] = positions[:, -1:] + torch.arange(1, bucket - prompt + 1, device=p.ids.device)
    p.mask.copy_(prompt_mask(attention_mask, prefix=p.prefix, rows=bucket, length=p.mask.shape[-1]))
    p.keep.fill_(prompt - 1)
    p.length.fill_(p.prefix + prompt)


def prefill(
    model: Any, g: DecodeGraph, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, options: FastDecodeOptions
) -> torch.Tensor:
    """Run the prompt into ``g.cache`` (emptied first, then the prefix written into its first
    ``g.prefix`` slots); returns the last position's float logits ``(B, V)``. Captured per bucket on
    CUDA (``options.prefill_graphs``); a capture failure turns captured prompt passes off for this
    model, with one warning, and the pass runs eagerly."""
    batch, prompt = input_ids.shape
    g.cache.reset()
    if g.prefix:
        write_prefix(model, g.cache, batch)
    states = fast_decode_state(model)
    bucket = prefill_bucket(batch, prompt, g.mask.shape[-1] - g.prefix)
    wanted = options.prefill_graphs if g.graph is not None else options.bucketed_prefill_on_cpu
    bucketed = bucket is not None and wanted and PREFILL_GRAPH not in states.off and all(
        hasattr(layer, "cumulative_length") for layer in g.cache.layers
    )
    if bucketed:
        p = g.prefills.get(bucket)
        try:
            if p is None:
                p = _build_prefill(model, g, batch, bucket)
                _fill_prefill(p, input_ids, attention_mask)
                if g.graph is not None:
                    p.graph = _capture_prefill(model, g, p, states)
                g.prefills[bucket] = p
            else:
                _fill_prefill(p, input_ids, attention_mask)
            if p.graph is not None:
                p.graph.replay()
            else:
                _prefill_body(model, g, p)
            return p.logits
        except Exception as e:  # capture failed (e.g. a host sync in the model's forward): eager from now on
            states.off[PREFILL_GRAPH] = f"{type(e).__name__}: {e}"
            logger.warning("capturing the prompt pass failed for %s, running prompts eagerly: %s",
                           type(model).__name__, states.off[PREFILL_GRAPH])
            g.prefills.clear()
            g.cache.reset()
            if g.prefix:
                write_prefix(model, g.cache, batch)
    return _eager_prefill(model, g, input_ids, attention_mask)


def _eager_prefill(model: Any, g: DecodeGraph, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The prompt pass launched from Python (long prompts, the map stage's batches, a failed
    capture), with the captured pass's swaps: its cost was the same ~20 eager kernels of rotary and
    cache writes, 14 of two norms and attention over the whole cache per layer, on tensors of
    batch x prompt rows (the map stage: 16 x 512)."""
    batch, prompt = input_ids.shape
    mask = attention_mask
    if packs(g.config, on=g.packed):  # a 4-D mask of the slots the prompt can see: K/V narrowed to them
        mask = prompt_mask(attention_mask, prefix=g.prefix, rows=prompt, length=g.prefix + prompt)
    elif g.prefix:  # a 2-D mask cannot say that the prompt starts after the prefix
        mask = prompt_mask(attention_mask, prefix=g.prefix, rows=prompt, length=g.mask.shape[-1])
    with decode_forward(g.config, g.fused, packed=g.packed, steps=g.steps), swapped(g.prompt_steps):
        out = model(input_ids=input_ids, attention_mask=mask, position_ids=prompt_positions(attention_mask),
                    **{cache_kwarg(model): g.cache}, use_cache=True, logits_to_keep=1)
    return out.logits[:, -1, :].float()


def _capture_prefill(model: Any, g: DecodeGraph, p: PrefillGraph, states: FastDecodeState) -> Any:
    warm_up_on_side_stream(lambda: _prefill_body(model, g, p))
    return capture_graph(lambda: _prefill_body(model, g, p), pool=prefill_pool(states, g.mask.device))


def prefill_pool(states: FastDecodeState, device: torch.device) -> Any:
    """The memory pool every captured prompt pass of the model shares (they never overlap).

    A small graph of its own holds the pool: the allocator releases a pool once no graph uses it,
    and a later capture into the released pool's handle fails an allocator assertion (seen on the
    H200, run 16, after every decode graph that held prompt passes was freed: a fourth-plus shape
    evicting the others, or a bench clearing them), which also left the CUDA RNG unusable."""
    if states.prefill_pool is None:
        pool = torch.cuda.graph_pool_handle()
        states.prefill_pool_holder = capture_graph(lambda: torch.zeros(1, device=device), pool=pool)
        states.prefill_pool = pool
    return states.prefill_pool
