"""``flash_decode``: the Triton flash-decoding kernel (``llm.kernels.decode_attention``) as a
torch custom op, with the PyTorch math it replaces as the fallback.

As for the GEMV (``llm.kernels.gemv_op``, which says why ``custom_op`` rather than
``triton_op``): the op is opaque to Dynamo and Inductor, the compiled decode step traces it
through its fake impl (no graph break) and calls it as one extern kernel; the launch choices
run as plain Python at call time. A kernel that fails to compile or launch falls back to
PyTorch for good, with one warning, rather than take the decode step down.
"""

from typing import Optional

import torch

from llm.kernels.give_up import INTERPRET, TRITON_AVAILABLE, give_up

_broken: list[str] = []  # why the kernel was given up (llm.kernels.give_up)


def attention_applies(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None
) -> bool:
    """Whether ``flash_decode`` would run the Triton kernel: one query token per row, H a
    multiple of the K/V heads, D a power of two in 16..256 with unit stride, one 16-bit dtype on
    CUDA (any float dtype on CPU under Triton's interpreter), mask None, boolean or additive
    float of shape ``(B or 1, 1, 1, >= L)``, no gradient wanted."""
    if not TRITON_AVAILABLE or _broken or query.dim() != 4 or key.dim() != 4 or value.shape != key.shape:
        return False
    batch, heads, q_length, dim = query.shape
    if q_length != 1 or key.shape[0] != batch or key.shape[3] != dim or heads % key.shape[1]:
        return False
    if dim & (dim - 1) or not 16 <= dim <= 256 or any(t.stride(-1) != 1 for t in (query, key, value)):
        return False
    if mask is not None and not (mask.dim() == 4 and mask.shape[0] in (1, batch) and mask.shape[1:3] == (1, 1)
                                 and mask.shape[3] >= key.shape[2] and mask.device == key.device
                                 and (mask.dtype == torch.bool or mask.dtype.is_floating_point)):
        return False
    if not query.dtype == key.dtype == value.dtype or not query.device == key.device == value.device:
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value)):
        return False  # the op has no backward
    if query.device.type == "cuda":
        return query.dtype in (torch.float16, torch.bfloat16)
    return INTERPRET and query.device.type == "cpu" and query.dtype.is_floating_point


def reference_decode_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """What ``flash_decode`` computes, in PyTorch: the query heads packed onto their K/V head,
    ``(B, KV, H/KV, D)``, two batched matmuls around a masked float32 softmax (Inductor compiles
    it into three kernels); ``(B, 1, H, D)`` contiguous in ``value``'s dtype."""
    batch, heads, _, dim = query.shape
    packed = query.reshape(batch, key.shape[1], heads // key.shape[1], dim)
    scores = torch.matmul(packed, key.transpose(-1, -2)).float() * scale  # (B, KV, H/KV, L)
    if mask is not None:
        mask = mask[:, :, :, : key.shape[2]]
        scores = scores.masked_fill(~mask, -torch.inf) if mask.dtype == torch.bool else scores + mask
    out = torch.matmul(scores.softmax(dim=-1).to(value.dtype), value)  # (B, KV, H/KV, D)
    return out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous()


def flash_decode(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None, *, scale: float
) -> torch.Tensor:
    """Attention of one query token per row, ``query`` ``(B, H, 1, D)`` against the K/V cache
    ``(B, KV, L, D)``: the Triton kernel where ``attention_applies``, else
    ``reference_decode_attention``. Returns ``(B, 1, H, D)``."""
    if not attention_applies(query, key, value, mask):
        return reference_decode_attention(query, key, value, mask, scale)
    return torch.ops.glmkb.decode_attention(query, key, value, mask, float(scale))


# typing.Optional, not "X | None": custom_op infers the op schema from these annotations at run
# time, and torch 2.11's inference is documented for Optional.
@torch.library.custom_op("glmkb::decode_attention", mutates_args=())
def decode_attention_op(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: Optional[torch.Tensor],  # noqa: UP045
    scale: float,
) -> torch.Tensor:
    """The op behind ``flash_decode``."""
    query, key, value = (t if t.stride(-1) == 1 else t.contiguous() for t in (query, key, value))  # compiled callers
    if not _broken:
        try:
            from llm.kernels.decode_attention import launch_decode_attention

            return launch_decode_attention(query, key, value, mask, scale)
        except Exception as e:  # Triton too old, a shape the GPU cannot run: PyTorch from now on
            give_up(_broken, e, kernel="decode attention", instead="using PyTorch")
    return reference_decode_attention(query, key, value, mask, scale)


@decode_attention_op.register_fake
def _decode_attention_fake(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    mask: Optional[torch.Tensor],  # noqa: UP045
    scale: float,
) -> torch.Tensor:
    batch, heads, _, dim = query.shape
    return value.new_empty((batch, 1, heads, dim))
