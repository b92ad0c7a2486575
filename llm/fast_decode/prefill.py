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
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from transformers.cache_utils import StaticLayer

from llm.fast_decode.attention import decode_forward, packs, swapped
from llm.fast_decode.cuda_graphs import capture_graph, warm_up_on_side_stream
from llm.fast_decode.prefix import prompt_mask, write_prefix
from llm.fast_decode.state import PREFILL_GRAPH, FastDecodeOptions, FastDecodeState, cache_kwarg, fast_decode_state

if TYPE_CHECKING:
    from llm.fast_decode.decode_graph import DecodeGraph

logger = logging.getLogger(__name__)

MIN_PREFILL_BUCKET = 64
PREFILL_GRAPH_MAX_TOKENS = 4096


class PromptInputs(NamedTuple):
    """A prompt pass's inputs as views of one int64 buffer, so that one copy moves them all to the GPU."""

    buffer: torch.Tensor  # (n,) int64
    ids: torch.Tensor  # (B, T) the prompt, right-padded to the bucket
    positions: torch.Tensor  # (B, T)
    attention: torch.Tensor  # (B, T) the prompt's attention mask, right-padded with 0
    keep: torch.Tensor  # (1,) index of the last real prompt position
    length: torch.Tensor  # () prefix + real prompt length: where the cache continues writing
    mask: torch.Tensor  # (B, 1, T, S) bool: which cache slots each prompt position sees

    @classmethod
    def allocate(cls, *, batch: int, bucket: int, span: int, device: torch.device, pin: bool = False) -> PromptInputs:
        """Zeroed inputs of one bucket in one buffer (in pinned host memory with ``pin``)."""
        rows = batch * bucket
        mask_words = rows * span // 8  # 8 bools a word: the bucket (>= 64 rows) keeps it whole
        buffer = torch.zeros(3 * rows + 2 + mask_words, dtype=torch.long, device=device, pin_memory=pin)
        ids, positions, attention = (buffer[i * rows : (i + 1) * rows].view(batch, bucket) for i in range(3))
        keep, length = buffer[3 * rows : 3 * rows + 1], buffer[3 * rows + 1]
        mask = buffer[3 * rows + 2 :].view(torch.bool).view(batch, 1, bucket, span)
        return cls(buffer, ids, positions, attention, keep, length, mask)


@dataclass
class PrefillGraph:
    """Static inputs of one prompt-length bucket and the graph of the prompt pass over them.

    The inputs are written on the host (``staged``, pinned) and copied to ``inputs`` in one
    asynchronous copy: built on the GPU they took ~25 small kernels (0.67-0.75 ms of host time on an
    H100 machine, run 37) after a synchronizing copy of the prompt, host work the GPU idled through
    before every prompt pass. On the CPU ``staged`` is ``inputs``."""

    inputs: PromptInputs  # on the model's device: what the pass reads
    staged: PromptInputs  # their host twin, written per call
    prefix: int = 0  # slots [0, prefix) hold the P-tuning prefix; the prompt is written after them
    uploaded: Any = None  # CUDA event after the last copy out of ``staged``: it may be rewritten once done
    logits: torch.Tensor | None = None  # (B, V) float, output of the last replay
    graph: Any = None


class PromptPass(NamedTuple):
    """What ``prefill`` gives the decode loop: the last position's logits and the prompt on the model's device."""

    logits: torch.Tensor  # (B, V) float
    input_ids: torch.Tensor  # (B, prompt)
    attention_mask: torch.Tensor  # (B, prompt)


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
    inputs = p.inputs
    with decode_forward(g.config, g.fused, packed=g.packed, steps=g.steps), swapped(g.prompt_steps):
        out = model(input_ids=inputs.ids, position_ids=inputs.positions, attention_mask=inputs.mask,
                    **{cache_kwarg(model): g.cache}, use_cache=True, logits_to_keep=inputs.keep)
    p.logits = out.logits[:, -1, :].float()
    for layer in layers:
        layer.cumulative_length.copy_(inputs.length)


def _build_prefill(model: Any, g: DecodeGraph, batch: int, bucket: int) -> PrefillGraph:
    device, length = g.mask.device, g.mask.shape[-1]
    # The slots a prompt position can see (never past its own): packed attention narrows K/V to them
    span = g.prefix + bucket if packs(g.config, on=g.packed) else length
    inputs = PromptInputs.allocate(batch=batch, bucket=bucket, span=span, device=device)
    if device.type == "cpu":
        return PrefillGraph(inputs=inputs, staged=inputs, prefix=g.prefix)
    staged = PromptInputs.allocate(batch=batch, bucket=bucket, span=span, device=torch.device("cpu"), pin=True)
    return PrefillGraph(inputs=inputs, staged=staged, prefix=g.prefix, uploaded=torch.cuda.Event())


def _fill_prefill(p: PrefillGraph, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> None:
    """Write the prompt's inputs on the host, then copy them to the pass's buffer in one asynchronous copy."""
    if p.uploaded is not None:
        p.uploaded.synchronize()  # the last call's copy out of ``staged`` (long done: its tokens were read)
    _stage_prompt(p.staged, input_ids.cpu(), attention_mask.cpu(), prefix=p.prefix)
    if p.staged is not p.inputs:
        p.inputs.buffer.copy_(p.staged.buffer, non_blocking=True)
        p.uploaded.record()


def _stage_prompt(s: PromptInputs, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, prefix: int) -> None:
    """The pass's inputs for a prompt, written on the host by the eager pass's own ``prompt_positions``
    and ``prefix.prompt_mask``: ids and mask padded to the bucket, positions, the cache's mask."""
    prompt = input_ids.shape[1]
    bucket = s.ids.shape[1]
    s.ids.zero_()
    s.ids[:, :prompt] = input_ids
    s.attention.zero_()
    s.attention[:, :prompt] = attention_mask
    positions = prompt_positions(attention_mask)
    s.positions[:, :prompt] = positions
    s.positions[:, prompt:] = positions[:, -1:] + torch.arange(1, bucket - prompt + 1)
    s.mask.copy_(prompt_mask(attention_mask, prefix=prefix, rows=bucket, length=s.mask.shape[-1]))
    s.keep.fill_(prompt - 1)
    s.length.fill_(prefix + prompt)


def empty_cache(cache: Any) -> None:
    """``cache.reset()`` in a few launches: transformers zeroes each layer's keys, values and length
    one kernel at a time (84 launches for a 28-layer model, 0.84-0.93 ms of host time on the H100
    machine before every prompt pass while the GPU idles, run 37); plain static layers are zeroed here
    by one multi-tensor zero per dtype, 0.22-0.24 ms (one list of mixed dtypes took PyTorch's
    per-tensor route: 0.77 ms). Other layer kinds keep their own reset."""
    layers = cache.layers
    if not all(type(layer) is StaticLayer and isinstance(layer.cumulative_length, torch.Tensor) for layer in layers):
        cache.reset()
        return
    tensors = [t for layer in layers if layer.is_initialized for t in (layer.keys, layer.values)]
    tensors += [layer.cumulative_length for layer in layers]
    for group in _by_kind(tensors):
        torch._foreach_zero_(group)


def _by_kind(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``tensors`` grouped by device and dtype: the groups ``_foreach`` ops run as one multi-tensor launch."""
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.device, t.dtype), []).append(t)
    return list(groups.values())


def prefill(
    model: Any, g: DecodeGraph, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, options: FastDecodeOptions
) -> PromptPass:
    """Run the prompt into ``g.cache`` (emptied first, then the prefix written into its first
    ``g.prefix`` slots); returns the last position's float logits ``(B, V)`` and the prompt on the
    model's device (``input_ids`` and ``attention_mask`` may be on the host). Captured per bucket on
    CUDA (``options.prefill_graphs``); a capture failure turns captured prompt passes off for this
    model, with one warning, and the pass runs eagerly."""
    batch, prompt = input_ids.shape
    empty_cache(g.cache)
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
            # The prompt on the device: views of the pass's inputs, which only the next call rewrites
            return PromptPass(p.logits, p.inputs.ids[:, :prompt], p.inputs.attention[:, :prompt])
        except Exception as e:  # capture failed (e.g. a host sync in the model's forward): eager from now on
            states.off[PREFILL_GRAPH] = f"{type(e).__name__}: {e}"
            logger.warning("capturing the prompt pass failed for %s, running prompts eagerly: %s",
                           type(model).__name__, states.off[PREFILL_GRAPH])
            g.prefills.clear()
            empty_cache(g.cache)
            if g.prefix:
                write_prefix(model, g.cache, batch)
    device = g.mask.device
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    return PromptPass(_eager_prefill(model, g, input_ids, attention_mask), input_ids, attention_mask)


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
