"""A P-tuning v2 prefix (``llm.adapters.ptuning``) in the fast path's static cache.

The prefix's per-layer keys/values fill cache slots ``[0, P)``; a prompt of ``T`` tokens
(left-padded rows included) follows in slots ``P .. P+T-1`` and the decode steps after it, so a
token in slot ``s`` of a row with ``pad`` left-padding slots has rotary position ``s - P - pad``:
real tokens are numbered from 0, as ChatGLM2 numbers them with a prefix. Every query attends to
all ``P`` prefix slots; left padding (between the prefix and a row's first token) stays masked.
The fast path claims its caches (``claim_cache``), so the eager hook of ``attach_prefix`` never
writes the prefix a second time. Without a prefix, ``P`` is 0 and everything is as before.
"""

from __future__ import annotations

from typing import Any

import torch

from llm.adapters.ptuning import claim_cache, prefix_cache_entries, prefix_length

STATIC_CACHE_REASON = (
    "a P-tuning prefix is attached: calls with their own logits processors or stopping criteria run generate "
    "eagerly (plain greedy/sampled calls take the decode graph, prefix included)"
)

__all__ = ["STATIC_CACHE_REASON", "claim_cache", "prefix_slots", "prompt_mask", "write_prefix"]


def prefix_slots(model: Any) -> int:
    """Cache slots the model's P-tuning prefix takes before every prompt (0 without one)."""
    return prefix_length(model)


def write_prefix(model: Any, cache: Any, batch: int) -> None:
    """Write the prefix into slots ``[0, P)`` of an emptied static ``cache`` (its write position
    becomes ``P``); the prefix is recomputed each call, so a prefix being trained stays current."""
    for layer, (key, value) in enumerate(prefix_cache_entries(model, batch)):
        cache.update(key, value, layer)


def prompt_mask(attention_mask: torch.Tensor, *, prefix: int, rows: int, length: int) -> torch.Tensor:
    """``(B, 1, rows, length)`` bool: which cache slots prompt position ``i`` (slot ``prefix + i``)
    attends to: the prefix, the row's real tokens up to itself, and itself (so left padding and
    the right padding of a bucket never have an all-masked row). ``rows`` may exceed the prompt
    (a bucket): positions past it see every slot up to themselves."""
    batch, prompt = attention_mask.shape
    device = attention_mask.device
    visible = torch.ones((batch, length), dtype=torch.bool, device=device)
    visible[:, prefix : prefix + prompt] = attention_mask.bool()
    row = torch.arange(rows, device=device)[:, None] + prefix
    col = torch.arange(length, device=device)[None, :]
    return (visible[:, None, None, :] | (col == row)) & (col <= row)
