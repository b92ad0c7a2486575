"""``rope_cache_write``: the Triton rotary + K/V cache write (``llm.kernels.rope_cache``) as a
torch custom op, with transformers' own math as the fallback.

The op mutates the two cache tensors it is given (``mutates_args``), so under ``torch.compile``
it is an in-place extern call on the graph's static cache buffers, as the ``index_copy_`` of
transformers' ``StaticLayer.update`` it replaces. A kernel that fails to compile or launch falls
back to PyTorch for good, with one warning (as ``gemv_op`` and ``decode_attention_op`` do).
"""


import torch

from llm.kernels.give_up import INTERPRET, TRITON_AVAILABLE, give_up

_broken: list[str] = []  # why the kernel was given up (llm.kernels.give_up)


def rope_applies(qkv: torch.Tensor, cos: torch.Tensor, k_cache: torch.Tensor) -> bool:
    """Whether ``rope_cache_write`` would run the Triton kernel: 16-bit tensors on CUDA (any float
    dtype on CPU under Triton's interpreter), unit stride along every last axis, no gradient."""
    if not TRITON_AVAILABLE or _broken:
        return False
    if any(t.stride(-1) != 1 for t in (qkv, cos, k_cache)) or (torch.is_grad_enabled() and qkv.requires_grad):
        return False
    if qkv.device.type == "cuda":
        return qkv.dtype in (torch.float16, torch.bfloat16)
    return INTERPRET and qkv.device.type == "cpu" and qkv.dtype.is_floating_point


def reference_rope_cache_write(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, k_cache: torch.Tensor,
    v_cache: torch.Tensor, length: torch.Tensor, heads: int, positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """What the kernel does, as the model's own forward does it: GLM's ``apply_rotary_pos_emb``
    on q and k (with ``positions``: by the tables' rows at them), then k and v copied into the
    caches at ``slot .. slot + T - 1`` and the cache's ``length`` set to ``slot + T`` (``StaticLayer.update``)."""
    from transformers.models.glm.modeling_glm import apply_rotary_pos_emb

    if positions is not None:
        at = positions.clamp(0, cos.shape[0] - 1)
        cos, sin = cos[at], sin[at]

    batch = qkv.shape[0]
    tokens = qkv.shape[1] if qkv.dim() == 3 else 1
    kv_heads, dim = k_cache.shape[1], k_cache.shape[3]
    q, k, v = (qkv.reshape(batch, tokens, heads + 2 * kv_heads, dim).transpose(1, 2)
               .split([heads, kv_heads, kv_heads], dim=1))
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    index = slot.reshape(1) + torch.arange(tokens, device=slot.device)
    k_cache.index_copy_(2, index, k.to(k_cache.dtype))
    v_cache.index_copy_(2, index, v.to(v_cache.dtype))
    length.copy_((index[-1:] + 1).reshape(length.shape))
    return q.contiguous()


def rope_cache_write(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, k_cache: torch.Tensor,
    v_cache: torch.Tensor, length: torch.Tensor, *, heads: int, positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """q of one decode token per row (or of T prompt tokens), rotated, as ``(B, H, T, D)``; k
    (rotated) and v written into ``k_cache``/``v_cache`` ``(B, KV, L, D)`` at ``slot .. slot + T - 1``
    (``slot``: a one-element long tensor), and ``length`` (the cache layer's count of written slots;
    not ``slot`` itself) set to ``slot + T``: one kernel, where a separate ``add_`` per layer cost
    1 us each (run 16, H200). ``qkv`` is the fused projection ``(B, (H + 2 KV) * D)`` or
    ``(B, T, (H + 2 KV) * D)``, ``cos``/``sin`` ``(B, T, R)`` as the model's rotary embedding
    returns them, or with ``positions`` ``(B, T)`` its tables ``(P, R)`` over positions
    ``0 .. P - 1`` (``llm.fast_decode.rotary_table``). The Triton kernel where ``rope_applies``."""
    if not rope_applies(qkv, cos, k_cache):
        return reference_rope_cache_write(qkv, cos, sin, slot, k_cache, v_cache, length, heads, positions)
    return torch.ops.glmkb.rope_cache_write(qkv, cos, sin, slot, k_cache, v_cache, length, heads, positions)


@torch.library.custom_op("glmkb::rope_cache_write", mutates_args=("k_cache", "v_cache", "length"))
def rope_cache_write_op(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, k_cache: torch.Tensor,
    v_cache: torch.Tensor, length: torch.Tensor, heads: int, positions: torch.Tensor | None = None,
) -> torch.Tensor:
    """The op behind ``rope_cache_write``."""
    qkv, cos, sin = (t if t.stride(-1) == 1 else t.contiguous() for t in (qkv, cos, sin))
    if not _broken:
        try:
            from llm.kernels.rope_cache import launch_rope_cache_write

            return launch_rope_cache_write(qkv, cos, sin, slot, k_cache, v_cache, length, heads, positions)
        except Exception as e:  # Triton too old, a shape the GPU cannot run: PyTorch from now on
            give_up(_broken, e, kernel="rotary + cache write", instead="using PyTorch")
    return reference_rope_cache_write(qkv, cos, sin, slot, k_cache, v_cache, length, heads, positions)


@rope_cache_write_op.register_fake
def _rope_cache_write_fake(
    qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor, k_cache: torch.Tensor,
    v_cache: torch.Tensor, length: torch.Tensor, heads: int, positions: torch.Tensor | None = None,
) -> torch.Tensor:
    return qkv.new_empty((qkv.shape[0], heads, qkv.shape[1] if qkv.dim() == 3 else 1, k_cache.shape[3]))
