"""The decode step's rotary, K/V cache write and attention of one token per row in one launch.

Between a layer's fused q/k/v GEMV and its attention, ``rope_cache_write`` runs a kernel of its
own (1.52 us a layer on an H100 with PDL off, run 33: ~43 us of a ChatGLM3-6B step, a cost that
does not shrink with INT8/INT4 weights). Here the flash-decoding split kernel
(``decode_attention._flash_decode_split`` with ``ROPE``) reads the fused q/k/v row itself: every
program rotates its query heads (``rope_cache.row_rotary``, the same float32 math rounded once),
and the one slice whose keys include the new token's cache slot first writes that token's rotated
k and its v there, then a CTA barrier, then attends as before. Other slices never read that slot,
so no program waits on another. ``FastDecodeOptions.rope_in_attention`` turns it on.

This module imports Triton; ``llm.kernels.rope_attention_op`` wraps it as a torch custom op.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llm.kernels.decode_attention import AttentionConfig, launch_attention_kernels


@dataclass(frozen=True)
class NewToken:
    """What the split kernel needs to rotate the query and write the new token's k and v itself
    (``launch_rope_decode_attention``): the arguments of ``rope_cache.launch_rope_cache_write``."""

    cos: torch.Tensor
    sin: torch.Tensor
    slot: torch.Tensor
    length: torch.Tensor
    positions: torch.Tensor | None


def launch_rope_decode_attention(
    qkv: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    slot: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    length: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    *,
    heads: int,
    positions: torch.Tensor | None = None,
    config: AttentionConfig | None = None,
) -> torch.Tensor:
    """``launch_rope_cache_write`` then ``launch_decode_attention`` in one launch, for one token per
    row: ``qkv`` ``(B, (H + 2 KV) * D)`` the fused projection, unrotated; ``cos``/``sin`` ``(B, 1, R)``
    (or with ``positions`` ``(B, 1)`` the tables ``(P, R)``); k (rotated) and v written into
    ``key``/``value`` at ``slot`` and ``length`` set to ``slot + 1``. Returns ``(B, 1, H, D)``."""
    batch, dim = qkv.shape[0], key.shape[3]
    q = qkv.reshape(batch, -1, dim)
    if positions is None:
        cos, sin = cos.reshape(batch, -1), sin.reshape(batch, -1)
    else:
        positions = positions.reshape(batch, -1)
    new = NewToken(cos=cos, sin=sin, slot=slot, length=length, positions=positions)
    return launch_attention_kernels(q, dim, heads, key, value, mask, scale, config, rope=new)
