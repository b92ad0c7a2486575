"""``rope_decode_attention``: the decode step's rotary, K/V cache write and attention in one Triton
launch (``llm.kernels.rope_attention``) as a torch custom op; the two ops it replaces
(``rope_cache_write`` then ``flash_decode``) as the fallback.

As ``rope_cache_write_op``, the op mutates the cache tensors and the cache's length
(``mutates_args``), so under ``torch.compile`` it is one in-place extern call on the graph's
static buffers. A kernel that fails to compile or launch falls back for good, with one warning.
"""

from typing import Optional

import torch

from llm.kernels.decode_attention_op import attention_applies, flash_decode
from llm.kernels.give_up import give_up
from llm.kernels.rope_cache_op import rope_applies, rope_cache_write

_broken: list[str] = []  # why the kernel was given up (llm.kernels.give_up)


def rope_attention_applies(qkv: torch.Tensor, cos: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                           mask: torch.Tensor | None, *, heads: int) -> bool:
    """Whether ``rope_decode_attention`` would run the one kernel: one token per row (``qkv``
    ``(B, (H + 2 KV) * D)``) where both ``rope_cache_write`` and ``flash_decode`` would run theirs."""
    if _broken or qkv.dim() != 2 or key.dim() != 4 or qkv.shape[1] != (heads + 2 * key.shape[1]) * key.shape[3]:
        return False
    query = qkv.view(qkv.shape[0], -1, key.shape[3])[:, :heads].unsqueeze(2)  # (B, H, 1, D), a view
    return rope_applies(qkv, cos, key) and attention_applies(query, key, value, mask)


def rope_decode_attention(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, key: torch.Tensor,
    value: torch.Tensor, length: torch.Tensor, mask: torch.Tensor | None, *, scale: float, heads: int,
    positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """``rope_cache_write`` (q and k rotated, k and v written at ``slot``, ``length`` set) then
    ``flash_decode`` of the rotated q, for one token per row: ``(B, 1, H, D)``. One kernel where
    ``rope_attention_applies``, else those two ops."""
    if rope_attention_applies(qkv, cos, key, value, mask, heads=heads):
        return torch.ops.glmkb.rope_decode_attention(qkv, cos, sin, slot, key, value, length, mask, float(scale),
                                                     heads, positions)
    return two_ops(qkv, cos, sin, slot, key, value, length, mask, scale, heads, positions)


def two_ops(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, key: torch.Tensor,
            value: torch.Tensor, length: torch.Tensor, mask: torch.Tensor | None, scale: float, heads: int,
            positions: torch.Tensor | None) -> torch.Tensor:
    """What the one kernel computes, as the decode step computes it without it."""
    query = rope_cache_write(qkv, cos, sin, slot, key, value, length, heads=heads, positions=positions)
    return flash_decode(query, key, value, mask, scale=scale)


# typing.Optional, not "X | None": custom_op infers the op schema from these annotations at run time.
@torch.library.custom_op("glmkb::rope_decode_attention", mutates_args=("key", "value", "length"))
def rope_decode_attention_op(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, key: torch.Tensor,
    value: torch.Tensor, length: torch.Tensor, mask: Optional[torch.Tensor], scale: float, heads: int,  # noqa: UP045
    positions: Optional[torch.Tensor] = None,  # noqa: UP045
) -> torch.Tensor:
    """The op behind ``rope_decode_attention``."""
    qkv, cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (qkv, cos, sin))
    if not _broken:
        try:
            from llm.kernels.rope_attention import launch_rope_decode_attention

            return launch_rope_decode_attention(qkv, cos, sin, slot, key, value, length, mask, scale, heads=heads,
                                                positions=positions)
        except Exception as e:  # Triton too old, a shape the GPU cannot run: the two ops from now on
            give_up(_broken, e, kernel="rotary + attention", instead="using the rotary and attention kernels")
    return two_ops(qkv, cos, sin, slot, key, value, length, mask, scale, heads, positions)


@rope_decode_attention_op.register_fake
def _rope_decode_attention_fake(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, key: torch.Tensor,
    value: torch.Tensor, length: torch.Tensor, mask: Optional[torch.Tensor], scale: float, heads: int,  # noqa: UP045
    positions: Optional[torch.Tensor] = None,  # noqa: UP045
) -> torch.Tensor:
    return value.new_empty((qkv.shape[0], 1, heads, key.shape[3]))
