"""Attention kernels of the decode step: packed grouped-query attention and fused q/k/v.

Two costs of the model's own forward, measured per layer of a ChatGLM3-6B-shaped model on an
H100 (``python -m bench.kernels``, docs/PERFORMANCE.md), that the decode step avoids:

- Attention of one new token. ChatGLM3-6B has 32 query heads sharing 2 K/V heads; compiled,
  transformers repeats K/V per query head and runs SDPA with a mask over the whole static cache.
  Here the query heads of a token are packed onto their K/V head, ``(B, H, 1, D)`` ->
  ``(B, KV, H/KV, D)``: K/V are read once, never copied. On CUDA (16-bit) that is one Triton
  flash-decoding kernel and a small combine (``llm.kernels.flash_decode``; 3 kernels, 8.2 us per
  layer on an H200 before); elsewhere two small batched matmuls around a masked float32 softmax,
  which Inductor compiles into a few kernels.
- q/k/v projections. Three GEMVs over the same input, two of them tiny (256 rows), cost nearly
  twice one GEMV over the concatenated weights. ``fuse_qkv_weights`` lays the three weights out
  as row blocks of one tensor, in place (same values, no extra memory); during the decode step the
  attention module's q_proj computes all three at once and k_proj / v_proj hand on their parts.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from llm.fast_decode.state import FUSED_QKV, FastDecodeState
from llm.kernels import flash_decode

logger = logging.getLogger(__name__)

DECODE_ATTENTION = "glmkb_packed_attention"
_registered = threading.Lock()


def packed_gqa_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except for one query token per row: then the query heads
    attend packed onto their K/V head, ``(B, KV, H/KV, D)`` against K/V as they are (same result).

    A 4-D mask narrower than the cache (the captured prompt pass: ``prefix + bucket`` slots of a
    static cache of ``L``) limits K/V to the slots it covers: no query sees a slot past it, so the
    result is the same, while SDPA with a mask, and transformers' ``repeat_kv`` copies of K/V for
    it, cost in proportion to the K/V length. Run 19 (H200, 6B, bucket 64, L = 1024): SDPA took
    29.4 us per layer; the copies ran in ``repeat_kv``'s 2 x (B, 32, L, 128) expansions."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-1] < key.shape[-2]:
        span = attention_mask.shape[-1]
        key, value = key[:, :, :span], value[:, :, :span]

    if not packs_heads(module, query.shape, key.shape[1], attention_mask, dropout, kwargs):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return flash_decode(query, key, value, attention_mask, scale=scale), None


def packs_heads(module: Any, query_shape: torch.Size | tuple[int, ...], kv_heads: int,
                attention_mask: torch.Tensor | None, dropout: float, kwargs: dict[str, Any]) -> bool:
    """Whether ``packed_gqa_attention`` attends with the query heads packed (else SDPA): one query
    token per row, the module's K/V groups as the heads say, no dropout, a ``(B, 1, ., .)`` mask
    or none, and none of the attention options SDPA alone takes."""
    groups = int(getattr(module, "num_key_value_groups", 1) or 1)
    return (
        query_shape[2] == 1
        and kv_heads * groups == query_shape[1]
        and dropout == 0.0
        and (attention_mask is None or (attention_mask.dim() == 4 and attention_mask.shape[1] == 1))
        and all(kwargs.get(name) is None for name in ("position_bias", "softcap", "sliding_window", "s_aux"))
    )


def register_decode_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    with _registered:
        if DECODE_ATTENTION not in AttentionInterface._global_mapping:
            AttentionInterface.register(DECODE_ATTENTION, packed_gqa_attention)
            AttentionMaskInterface.register(DECODE_ATTENTION, sdpa_mask)


FUSED_TENSORS = ("weight", "bias", "scales", "zeros")  # row-major along the output features in every layer kind


def fuse_axes(projection: torch.nn.Module) -> dict[str, int]:
    """The tensors of ``projection`` that fused q/k/v concatenates, each with its output-feature
    axis: axis 0 of ``FUSED_TENSORS`` unless the layer says otherwise (``fuse_axes``: INT4 on
    tinygemm keeps its scales and zeros as ``[K/group, N, 2]``)."""
    return dict(getattr(projection, "fuse_axes", None) or dict.fromkeys(FUSED_TENSORS, 0))


class FusedQKV:
    """One attention module's q/k/v weights as row blocks of one tensor, and the three stand-in
    projections that compute them with one GEMV during the decode step.

    Works for ``nn.Linear`` and for glmkb's weight-only INT8/INT4 layers (``llm.quantization``):
    their int weights, scales and zero points are all laid out by output row, so they fuse the
    same way, and the fused projection is one quantized layer over the concatenated buffers.
    """

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module
        self.originals = (module.q_proj, module.k_proj, module.v_proj)
        self.sizes = [p.out_features for p in self.originals]
        self.axes = fuse_axes(self.originals[0])
        self.tensors: dict[str, torch.Tensor] = {}
        self.offsets: dict[str, list[int]] = {}
        with torch.inference_mode(False), torch.no_grad():
            for name, axis in self.axes.items():
                parts = [getattr(p, name, None) for p in self.originals]
                if parts[0] is None:
                    continue
                lengths = [t.shape[axis] for t in parts]
                fused = torch.cat(parts, dim=axis)
                for p, part in zip(self.originals, fused.split(lengths, dim=axis), strict=True):
                    _set_tensor(p, name, part)
                self.tensors[name] = fused
                self.offsets[name] = [sum(lengths[:i]) for i in range(3)]
        self.weight = self.tensors["weight"]
        self.bias = self.tensors.get("bias")
        self.projection = None if type(self.originals[0]) is torch.nn.Linear else self._quantized_projection()
        self.linear: torch.nn.Module | None = None  # set by gemv_route to run the plain-linear GEMV elsewhere
        self.pending: list[torch.Tensor] = []
        self.stand_ins = tuple(_ProjectionPart(self, i) for i in range(3))

    def _quantized_projection(self) -> torch.nn.Module:
        """A layer of q_proj's kind whose buffers are the fused tensors (no copy)."""
        proj = copy.copy(self.originals[0])
        proj._buffers = {**proj._buffers, **self.tensors}
        proj._parameters = dict(proj._parameters)
        proj._modules = dict(proj._modules)
        proj.out_features = sum(self.sizes)
        return proj

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """q, k and v of ``x`` concatenated along the last axis."""
        if self.projection is None:
            return F.linear(x, self.weight, self.bias) if self.linear is None else self.linear(x)
        return self.projection(x)

    def swap(self, *, fused: bool) -> None:
        """Put the stand-ins (``fused=True``) or the original projections on the module."""
        if fused and not self.intact():
            raise RuntimeError("fused q/k/v: the model's q/k/v weights were replaced after they were fused")
        for name, proj in zip(("q_proj", "k_proj", "v_proj"), self.stand_ins if fused else self.originals,
                              strict=True):
            setattr(self.module, name, proj)
        self.pending.clear()

    def intact(self) -> bool:
        """Whether the projections still read the fused tensors (``model.to(...)`` replaces them)."""
        return all(
            getattr(p, name) is not None
            and getattr(p, name).data_ptr()
            == fused.data_ptr() + offset * fused.stride(self.axes[name]) * fused.element_size()
            for name, fused in self.tensors.items()
            for p, offset in zip(self.originals, self.offsets[name], strict=True)
        )


def _set_tensor(module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    """Point a parameter (its ``.data``) or a buffer of ``module`` at ``value``."""
    if name in module._parameters:
        module._parameters[name].data = value
    else:
        module._buffers[name] = value


class _ProjectionPart(torch.nn.Module):
    """Stands in for q_proj (``index`` 0: computes q, k and v at once), k_proj or v_proj (1, 2:
    hand on what q_proj computed from the same input). Any other call order raises, so a model
    whose attention calls them differently falls back instead of computing something else."""

    def __init__(self, fused: FusedQKV, index: int) -> None:
        super().__init__()
        self.fused = fused
        self.index = index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fused
        if self.index == 0:
            q, k, v = fused.project(x).split(fused.sizes, dim=-1)
            fused.pending[:] = [x, k, v]
            return q
        if len(fused.pending) != 4 - self.index or fused.pending[0] is not x:
            raise RuntimeError("fused q/k/v: the attention did not call q_proj, k_proj, v_proj in order on one input")
        part = fused.pending.pop(1)
        if self.index == 2:
            fused.pending.clear()
        return part


def fusable_qkv(module: torch.nn.Module) -> bool:
    """Whether ``module`` has q/k/v projections of one kind (plain Linear, or one weight-only
    quantized kind and group size) over one input, dtype and device, whose rows concatenate
    (INT4's CPU form packs 64-row blocks: ``rows_concatenate``)."""
    from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear

    projections = [getattr(module, name, None) for name in ("q_proj", "k_proj", "v_proj")]
    first = projections[0]
    if type(first) not in (torch.nn.Linear, WeightOnlyInt8Linear, WeightOnlyInt4Linear):
        return False
    axes = fuse_axes(first)
    return all(
        type(p) is type(first)
        and p.in_features == first.in_features
        and getattr(p, "group_size", None) == getattr(first, "group_size", None)
        and fuse_axes(p) == axes
        and getattr(p, "rows_concatenate", True)
        and all(_same_kind(getattr(p, name, None), getattr(first, name, None), axis=axis)
                for name, axis in axes.items())
        and not torch.nn.utils.parametrize.is_parametrized(p)
        for p in projections
    )


def _same_kind(a: torch.Tensor | None, b: torch.Tensor | None, *, axis: int = 0) -> bool:
    """Same dtype, device and shape but for the output-feature ``axis`` (what concatenates)."""
    if a is None or b is None:
        return a is None and b is None
    shape_a, shape_b = list(a.shape), list(b.shape)
    del shape_a[axis], shape_b[axis]
    return a.dtype == b.dtype and a.device == b.device and shape_a == shape_b


def fuse_qkv_weights(model: torch.nn.Module) -> list[FusedQKV]:
    """Fuse the q/k/v weights of every attention module that allows it (in place, same values)."""
    return [FusedQKV(m) for m in model.modules() if fusable_qkv(m)]


@contextmanager
def decode_forward(
    config: Any, fused: list[FusedQKV], *, packed: bool = True, gemv: Any = None, steps: list[Any] = ()
) -> Iterator[None]:
    """Run the block with packed attention (``packed`` and the model uses "sdpa"), the fused q/k/v
    stand-ins, the GEMV kernel choice (``gemv``: a ``gemv_route.GemvRoute`` or None) and, with
    packed attention, the attention modules' decode-step forwards (``steps``:
    ``attention_step.AttentionStep``) in place; everything is put back after. Python-only: a CUDA
    graph keeps the kernels it captured inside the block."""
    with packed_attention(config, on=packed) as pack, _decode_swaps(fused, gemv, steps if pack else ()):
        yield


@contextmanager
def packed_attention(config: Any, *, on: bool = True) -> Iterator[bool]:
    """Run the block with ``packed_gqa_attention`` where the model uses "sdpa" (``on``); yields
    whether it does. The prompt pass runs under it too, for its narrowed K/V span."""
    pack = packs(config, on=on)
    previous = getattr(config, "_attn_implementation", None)
    if pack:
        register_decode_attention()
        config._attn_implementation = DECODE_ATTENTION
    try:
        yield pack
    finally:
        if pack:
            config._attn_implementation = previous


def packs(config: Any, *, on: bool = True) -> bool:
    """Whether ``packed_attention(config, on=on)`` swaps in ``packed_gqa_attention``."""
    return on and getattr(config, "_attn_implementation", None) in ("sdpa", DECODE_ATTENTION)


@contextmanager
def swapped(parts: Any) -> Iterator[None]:
    """Run the block with each of ``parts`` (``swap(on=...)``: attention steps, norm steps, a GEMV
    route) in place; put the originals back after."""
    parts = list(parts)
    for part in parts:
        part.swap(on=True)
    try:
        yield
    finally:
        for part in parts:
            part.swap(on=False)


@contextmanager
def _decode_swaps(fused: list[FusedQKV], gemv: Any, steps: Any) -> Iterator[None]:
    for f in fused:
        f.swap(fused=True)
    try:
        with swapped([gemv] if gemv is not None else []), swapped(steps):
            yield
    finally:
        for f in fused:
            f.swap(fused=False)


def fuse_once(model: Any, state: FastDecodeState) -> list[FusedQKV]:
    """The model's fused q/k/v (fused on the first call, before any compiled code has seen its
    parameters); on failure, e.g. no GPU memory for one layer's fused copy, the decode step
    keeps three GEMVs and ``state.off`` says why."""
    if state.fused is None:
        try:
            state.fused = fuse_qkv_weights(model)
        except (RuntimeError, torch.cuda.OutOfMemoryError) as e:
            state.fused = []
            state.off[FUSED_QKV] = f"{type(e).__name__}: {e}"
            logger.warning("could not fuse the q/k/v weights of %s, decoding with three projections: %s",
                           type(model).__name__, e)
    return state.fused
