"""Static-cache ``generate``: transformers' own loop on a reused, compiled ``StaticCache``.

The fast path for calls the decode graph cannot run (their own logits processors or stopping
criteria): ``generate`` with a ``StaticCache`` reused per model and shape key ``(batch, cache
length)``, the length bucketed to a power of two (at least ``MIN_CACHE_LENGTH``), which
transformers compiles itself (``mode="reduce-overhead"``). Reusing the cache keeps CUDA graph
addresses stable (a fresh cache per call would re-record, and after 128 re-records torch
silently stops using graphs); buckets let prompts of any length share a few compiled shapes.
The first call of a shape compiles it (tens of seconds for a 6B model); a failure turns this
path off for the model (``FastDecodeState.off``) with one warning.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from llm.fast_decode.cuda_graphs import adopt_cudagraph_trees_on_this_thread
from llm.fast_decode.state import STATIC_CACHE, FastDecodeState, cache_kwarg, fast_decode_state

logger = logging.getLogger(__name__)

MIN_CACHE_LENGTH = 1024
MAX_CACHES_PER_MODEL = 4
WARMUP_NEW_TOKENS = 4  # prefill + 3 decode steps: compile, record the CUDA graph, replay it
# Per-call generate options that the fast path cannot honour (they bring their own cache or
# change the batch shape); a call using one of them runs eagerly.
EAGER_ONLY_OPTIONS = ("cache", "past_key_values", "cache_implementation", "assistant_model", "prompt_lookup_num_tokens")


def cache_length_bucket(length: int, *, minimum: int = MIN_CACHE_LENGTH, limit: int | None = None) -> int:
    """The static cache length for ``length`` tokens: the next power of two, at least ``minimum``.

    ``limit`` (the model's context length) caps the bucket, but never below ``length`` itself.
    """
    if length < 1:
        raise ValueError(f"cache length must be positive (got {length})")
    bucket = max(minimum, 1 << (length - 1).bit_length())
    if limit is not None and bucket > limit:
        bucket = max(limit, length)
    return bucket


def call_supports_fast_decode(generate_kwargs: dict[str, Any]) -> bool:
    """Whether one call's generate options allow the fast path (no own cache, no beams)."""
    if any(generate_kwargs.get(name) is not None for name in EAGER_ONLY_OPTIONS):
        return False
    return int(generate_kwargs.get("num_beams") or 1) == 1 and int(generate_kwargs.get("num_return_sequences") or 1) == 1


def compile_config() -> Any:
    """The compile settings of the decode step (transformers' defaults: Inductor, CUDA graphs)."""
    from transformers import CompileConfig

    return CompileConfig(mode="reduce-overhead", fullgraph=False)


def shape_key(model: Any, generate_kwargs: dict[str, Any]) -> tuple[int, int]:
    """``(batch, bucketed cache length)`` of a call: P-tuning prefix, prompt and every token it may generate."""
    from llm.fast_decode.prefix import prefix_slots  # here, not at the top: prefix imports llm.adapters

    input_ids = generate_kwargs["input_ids"]
    max_new = int(generate_kwargs.get("max_new_tokens") or getattr(model.generation_config, "max_new_tokens", None) or 20)
    limit = getattr(model.config, "max_position_embeddings", None)
    needed = prefix_slots(model) + int(input_ids.shape[1]) + max_new
    return int(input_ids.shape[0]), cache_length_bucket(needed, limit=limit)


def static_cache(model: Any, state: FastDecodeState, key: tuple[int, int]) -> Any:
    """The reusable cache of ``key``, emptied; the least recently used one beyond the limit is freed."""
    from transformers import StaticCache

    cache = state.caches.pop(key, None)
    if cache is None:
        cache = StaticCache(config=model.config.get_text_config(decoder=True), max_cache_len=key[1])
    else:
        cache.reset()
    state.caches[key] = cache
    while len(state.caches) > MAX_CACHES_PER_MODEL:
        old_key, _ = state.caches.popitem(last=False)
        state.warmups.pop(old_key, None)
    return cache


def with_fast_decode(model: Any, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate_kwargs`` for the fast path (warming the shape up first), or unchanged if it is off.

    Call on the model's worker thread, right before ``model.generate``. A failed warm-up turns
    the fast path off for this model, with one warning, and the call runs eagerly. A model with
    a P-tuning prefix runs such calls eagerly too (``prefix.STATIC_CACHE_REASON``): tried on CPU,
    ``generate`` on a static cache holding the prefix matched the eager logits for one prompt but
    not for left-padded rows (relative error ~1), as its masks do not know the prefix slots.
    """
    from llm.fast_decode.prefix import prefix_slots

    if prefix_slots(model):
        return generate_kwargs
    state = fast_decode_state(model)
    if STATIC_CACHE in state.off or not call_supports_fast_decode(generate_kwargs):
        return generate_kwargs
    if torch.device(model.device).type == "cuda":
        adopt_cudagraph_trees_on_this_thread()
    key = shape_key(model, generate_kwargs)
    if key not in state.warmups:
        try:
            state.warmups[key] = warm_up(model, state, key, generate_kwargs)
        except Exception as e:  # compile / CUDA graph failure: fall back once, for good
            state.off[STATIC_CACHE] = f"{type(e).__name__}: {e}"
            state.caches.clear()
            logger.warning(
                "fast decode (static cache + torch.compile) failed for %s, using plain generate from now on: %s",
                type(model).__name__,
                state.off[STATIC_CACHE],
            )
            return generate_kwargs
    cache = static_cache(model, state, key)
    return {**generate_kwargs, cache_kwarg(model): cache, "compile_config": compile_config()}


def warm_up(model: Any, state: FastDecodeState, key: tuple[int, int], generate_kwargs: dict[str, Any]) -> float:
    """Compile and record the decode step for ``key`` with a few greedy tokens; returns seconds."""
    input_ids = generate_kwargs["input_ids"][:, -8:]
    attention_mask = generate_kwargs.get("attention_mask")
    started = time.perf_counter()
    model.generate(
        input_ids=input_ids,
        attention_mask=None if attention_mask is None else attention_mask[:, -8:],
        **{cache_kwarg(model): static_cache(model, state, key)},
        compile_config=compile_config(),
        max_new_tokens=WARMUP_NEW_TOKENS,
        min_new_tokens=WARMUP_NEW_TOKENS,
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        eos_token_id=generate_kwargs.get("eos_token_id"),
        pad_token_id=generate_kwargs.get("pad_token_id"),
    )
    if input_ids.device.type == "cuda":
        torch.cuda.synchronize(input_ids.device)
    seconds = time.perf_counter() - started
    logger.info("fast decode ready for batch %d, cache length %d (warm-up %.1f s)", key[0], key[1], seconds)
    return seconds
