"""``qkv_rope_cache_write``: one decode token's fused q/k/v GEMV with the rotary and K/V cache
writes in its epilogue (``llm.kernels.gemv.launch_qkv_rope``), as a torch custom op.

What it replaces is two ops in a row, ``gemv_linear`` then ``rope_cache_write``: the second is a
kernel of ~1.4 us per layer (run 16, H200) on 9 KB of data, i.e. a launch and a ramp-up, 28 of
them per ChatGLM3-6B step (~41 us, run 21's step profile). Here the GEMV's own programs rotate
their outputs and store q, k and v where the rope kernel would. The outputs are rounded to the
activation dtype before the rotary, as the GEMV's store rounded them for the rope kernel, so
the fused and the two-op path write the same bits (``tests/test_qkv_rope.py`` checks it).

Only the one-row (batch 1) decode step with a one-row GEMV tile of whole rotary pairs takes the
fused kernel; anything else (a batch, a split-K or cuBLAS choice for the shape, no Triton) runs
the two ops, so the numbers are the same either way.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch

from llm.kernels.gemv_configs import TORCH
from llm.kernels.gemv_op import choose_config, gemv_applies, gemv_linear
from llm.kernels.rope_cache_op import rope_applies, rope_cache_write

logger = logging.getLogger(__name__)

_broken: list[str] = []  # why the fused kernel was given up, once it failed (the two ops remain)


def qkv_rope_applies(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether ``qkv_rope_cache_write`` may run the fused op: one token of one row, and both the
    GEMV and the rope kernel would run (``gemv_applies``, ``rope_applies``)."""
    return (not _broken and x.numel() == x.shape[-1] and k_cache.shape[0] == 1 and cos.numel() == cos.shape[-1]
            and gemv_applies(x, weight) and rope_applies(x, cos, k_cache))


def qkv_rope_cache_write(
    x: torch.Tensor, weight: torch.Tensor, *, scales: torch.Tensor | None, bias: torch.Tensor | None,
    cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    length: torch.Tensor, heads: int,
) -> torch.Tensor:
    """q ``(1, H, 1, D)`` of one decode token, rotated; its k (rotated) and v written into the
    caches at ``slot``, ``length`` set to ``slot + 1``: ``rope_cache_write(gemv_linear(x, ...))``
    in one kernel where ``qkv_rope_applies``, else exactly those two."""
    if not qkv_rope_applies(x, weight, cos, k_cache):
        qkv = gemv_linear(x, weight, scales=scales, bias=bias)
        return rope_cache_write(qkv.reshape(qkv.shape[0], -1), cos, sin, slot, k_cache, v_cache, length, heads=heads)
    return torch.ops.glmkb.qkv_rope_cache_write(x.reshape(1, -1), weight, scales, bias, cos.reshape(1, -1),
                                                sin.reshape(1, -1), slot, k_cache, v_cache, length, heads)


# typing.Optional, not "X | None": custom_op infers the schema from these annotations (as gemv_op).
@torch.library.custom_op("glmkb::qkv_rope_cache_write", mutates_args=("k_cache", "v_cache", "length"))
def qkv_rope_cache_write_op(
    x: torch.Tensor, weight: torch.Tensor, scales: Optional[torch.Tensor], bias: Optional[torch.Tensor],  # noqa: UP045
    cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    length: torch.Tensor, heads: int,
) -> torch.Tensor:
    """The op behind ``qkv_rope_cache_write``: the fused kernel where the shape's GEMV choice is a
    one-row tile it can finish with the rotary, else the GEMV op and the rope op."""
    if not _broken:
        try:
            from llm.kernels.gemv import launch_qkv_rope, qkv_rope_fits

            choice = choose_config(x, weight, scales, bias)
            if choice != TORCH and qkv_rope_fits(choice):
                return launch_qkv_rope(x, weight, scales, bias, choice, cos=cos, sin=sin, slot=slot,
                                       k_cache=k_cache, v_cache=v_cache, length=length, heads=heads)
        except Exception as e:  # Triton too old for the epilogue, a GPU that cannot run it: two ops from now on
            _broken.append(f"{type(e).__name__}: {e}")
            logger.warning("the fused q/k/v + rotary kernel failed, using two kernels: %s", _broken[0])
    qkv = gemv_linear(x, weight, scales=scales, bias=bias)
    return rope_cache_write(qkv, cos.reshape(1, 1, -1), sin.reshape(1, 1, -1), slot, k_cache, v_cache, length,
                            heads=heads)


@qkv_rope_cache_write_op.register_fake
def _qkv_rope_cache_write_fake(
    x: torch.Tensor, weight: torch.Tensor, scales: Optional[torch.Tensor], bias: Optional[torch.Tensor],  # noqa: UP045
    cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
    length: torch.Tensor, heads: int,
) -> torch.Tensor:
    return x.new_empty((1, heads, 1, k_cache.shape[3]))
