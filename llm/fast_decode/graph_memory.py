"""Room on the GPU for a new decode graph: least recently used graphs go first, and only when needed.

Each decode graph owns a static KV cache of its shape (``graph_bytes``: 2 x layers x batch x KV heads x
cache length x head size; the ChatGLM3-6B shape in bf16 holds 28 KiB a slot, so batch 16 at 4,096 slots
is 1.9 GB). A server that batches concurrent requests meets up to five batch sizes (1-16) in two or
three cache buckets; with at most four graphs kept by count, the least recently used one was dropped
and captured again whenever the mix came round (0.15-0.22 s of a first token on the 6B shape, run 32c:
the compiled code is reused), and a build that ran out of memory turned the decode graph off for the
model for good (``generate`` on a compiled static cache from then on, about half the speed). Graphs are now kept up to ``MAX_GRAPHS_PER_MODEL``
while the GPU has room: before a new graph is built, ``make_room`` drops the least recently used ones
only while free device memory is short of the new graph's size plus ``headroom`` (a tenth of the card,
at least ``MIN_HEADROOM``: what the embedding model and a long prompt pass need beside the graphs). A
build that still runs out of memory drops every other graph and is tried once more
(``build_with_room``). A dropped graph's memory does come back (run 32c: dropping a 112 MiB graph of the
6B shape freed 156 MiB). On the CPU (tests) there is no device memory to ask about: the count applies.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

import torch

__all__ = [
    "MAX_GRAPHS_PER_MODEL", "MIN_HEADROOM", "build_with_room", "free_bytes", "graph_bytes", "headroom", "make_room",
]

MAX_GRAPHS_PER_MODEL = 16  # five batch sizes (1-16) in three cache buckets, and one more
MIN_HEADROOM = 1 << 30  # a 4,096-token prompt pass of the 6B shape needs ~0.3 GB beside the graphs

G = TypeVar("G")


def graph_bytes(model: Any, key: tuple[int, int]) -> int:
    """Device bytes a decode graph of ``key`` = (batch, cache length) holds: its KV cache, and its per-row
    vocabulary buffers (logits, the penalty's seen-token mask)."""
    config = model.config.get_text_config(decoder=True)
    batch, length = key
    heads = int(getattr(config, "num_attention_heads", 1))
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    layers = int(config.num_hidden_layers)
    element = model.dtype.itemsize
    vocab = int(config.vocab_size)
    return 2 * layers * batch * kv_heads * length * head_dim * element + batch * vocab * 5


def free_bytes(device: torch.device) -> int | None:
    """Free memory on ``device`` now (None off CUDA), after handing the allocator's unused cache back."""
    if device.type != "cuda":
        return None
    torch.cuda.empty_cache()
    return int(torch.cuda.mem_get_info(device)[0])


def headroom(device: torch.device) -> int:
    """Device memory new graphs leave free: a tenth of the card, at least ``MIN_HEADROOM``."""
    return max(MIN_HEADROOM, int(torch.cuda.get_device_properties(device).total_memory) // 10)


def make_room(graphs: OrderedDict[Any, Any], needed: int, device: torch.device, *, limit: int) -> int:
    """Drop least recently used ``graphs`` until a new one of ``needed`` bytes fits beside ``headroom`` and
    the count stays within ``limit``; the number dropped."""
    dropped = 0
    while graphs and len(graphs) >= limit:
        graphs.popitem(last=False)
        dropped += 1
    while graphs:
        free = free_bytes(device)
        if free is None or free >= needed + headroom(device):
            break
        graphs.popitem(last=False)
        dropped += 1
    return dropped


def build_with_room(build: Callable[[], G], graphs: OrderedDict[Any, Any], needed: int, device: torch.device, *,
                    limit: int = MAX_GRAPHS_PER_MODEL) -> G:
    """``build()`` after ``make_room``; out of memory with other graphs still kept, it drops them all and
    builds once more (a CUDA graph's memory is its own: a full device fails the build, not a step)."""
    make_room(graphs, needed, device, limit=limit)
    try:
        return build()
    except torch.cuda.OutOfMemoryError:
        if not graphs:
            raise
    graphs.clear()
    free_bytes(device)  # hands the dropped graphs' memory back to the device
    return build()
