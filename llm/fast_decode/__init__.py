"""Fast decode path on CUDA: a reused static KV cache and one captured CUDA graph per token.

Plain ``generate`` with its growing ``DynamicCache`` launches hundreds of small kernels per
token from Python and waits for the GPU between steps, so a 6B model on one H100 runs at about a
tenth of the memory-bandwidth limit (measurements: docs/PERFORMANCE.md). ``fast_generate`` takes
the fastest path a call allows; each path is a module:

- ``decode_graph`` (plain greedy or sampled calls, one prompt or a batch): each token is one
  replay of a CUDA graph holding the ``torch.compile``d one-token forward, the next-token choice
  and every buffer update; the host reads tokens one step late while the next step runs;
- ``prefill``: that path's prompt pass, captured per prompt-length bucket;
- ``attention``: what makes the decode step's forward fast (packed GQA attention, fused q/k/v);
- ``gemv_route``: which GEMV kernel the decode step's linear layers run (``gemv_kernel``);
- ``prefix``: a P-tuning v2 prefix in the static cache's first slots, masks and positions around it;
- ``static_cache`` (calls with their own logits processors or stopping criteria): ``generate``
  on a reused ``StaticCache``, which transformers compiles itself;
- ``state``: the options (``FastDecodeOptions``, fields of ``llm.ChatGLM``), the one per-model
  ``FastDecodeState``, and ``fast_decode_report``: for every path, whether it runs or why not.

A path that fails to compile or capture is turned off for that model (``state.off``, one
logged warning) and the call runs on the next slower path. Everything here runs on the model's
worker thread (``llm.streaming.model_worker``), one generation at a time, under
``torch.inference_mode``.
"""

from __future__ import annotations

import logging
from typing import Any

from llm.fast_decode.attention import (
    DECODE_ATTENTION,
    FusedQKV,
    decode_forward,
    fusable_qkv,
    fuse_qkv_weights,
    packed_gqa_attention,
    register_decode_attention,
)
from llm.fast_decode.cuda_graphs import capture_graph, warm_up_on_side_stream
from llm.fast_decode.decode_graph import (
    DecodeGraph,
    GraphUnavailable,
    Sampling,
    build_decode_graph,
    cached_decode_graph,
    graph_call_supported,
    graph_generate,
)
from llm.fast_decode.prefill import MIN_PREFILL_BUCKET, prefill_bucket, prompt_positions
from llm.fast_decode.state import (
    DECODE_GRAPH,
    DEFAULT_OPTIONS,
    FUSED_QKV,
    PACKED_ATTENTION,
    PATHS,
    PREFILL_GRAPH,
    STATIC_CACHE,
    FastDecodeOptions,
    FastDecodeState,
    cache_kwarg,
    fast_decode_report,
    fast_decode_state,
    unsupported_reason,
)
from llm.fast_decode.static_cache import (
    MIN_CACHE_LENGTH,
    cache_length_bucket,
    call_supports_fast_decode,
    with_fast_decode,
)
from llm.kernels.pdl import pdl_launches
from llm.model_device import on_model_device

__all__ = [
    "DECODE_ATTENTION",
    "DECODE_GRAPH",
    "DEFAULT_OPTIONS",
    "FUSED_QKV",
    "MIN_CACHE_LENGTH",
    "MIN_PREFILL_BUCKET",
    "PACKED_ATTENTION",
    "PATHS",
    "PREFILL_GRAPH",
    "STATIC_CACHE",
    "DecodeGraph",
    "FastDecodeOptions",
    "FastDecodeState",
    "FusedQKV",
    "GraphUnavailable",
    "Sampling",
    "build_decode_graph",
    "cache_kwarg",
    "cache_length_bucket",
    "call_supports_fast_decode",
    "capture_graph",
    "cached_decode_graph",
    "decode_forward",
    "fast_decode_report",
    "fast_decode_state",
    "fast_generate",
    "fusable_qkv",
    "fuse_qkv_weights",
    "graph_call_supported",
    "graph_generate",
    "packed_gqa_attention",
    "prefill_bucket",
    "prompt_positions",
    "register_decode_attention",
    "unsupported_reason",
    "warm_up_on_side_stream",
    "with_fast_decode",
]

logger = logging.getLogger(__name__)


def fast_generate(
    model: Any,
    kwargs: dict[str, Any],
    *,
    cancel_types: tuple[type, ...],
    options: FastDecodeOptions = DEFAULT_OPTIONS,
) -> Any:
    """``model.generate(**kwargs)`` on the fastest path the call allows: the decode graph for plain
    greedy/sampled calls, else generate with the reused static cache and compiled step
    (``with_fast_decode``). A graph that cannot be built turns the graph loop off for this model,
    with one warning. The prompt's tensors may be on the host: each path moves them to the model's
    device (the decode graph with its prompt pass's inputs, ``prefill``). Run on the model's worker
    thread, under ``torch.inference_mode``."""
    with pdl_launches(options.pdl):
        return _fast_generate(model, kwargs, cancel_types=cancel_types, options=options)


def _fast_generate(model: Any, kwargs: dict[str, Any], *, cancel_types: tuple[type, ...],
                   options: FastDecodeOptions) -> Any:
    state = fast_decode_state(model)
    if (
        DECODE_GRAPH not in state.off
        and call_supports_fast_decode(kwargs)
        and graph_call_supported(kwargs, cancel_types)
    ):
        events = [c.event for c in kwargs.get("stopping_criteria") or []]
        try:
            return graph_generate(model, kwargs, cancel_events=events, options=options)
        except GraphUnavailable as e:
            state.off[DECODE_GRAPH] = str(e)
            state.graphs.clear()
            logger.warning("decode graph unavailable for %s, using generate with a static cache: %s",
                           type(model).__name__, e)
    return model.generate(**with_fast_decode(model, on_model_device(model, kwargs)))
