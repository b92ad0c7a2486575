"""The decode step's own forward of a GLM attention module: q/k/v, rotary + cache write, attention.

transformers' ``GlmAttention.forward`` for one token is, after the fused q/k/v GEMV, three small
kernels for the rotary and the two cache writes (~4.2 us per layer on the H200, run 15), then
the attention. During a decode step (``FastDecodeOptions.fused_rope``) the module's forward is
this one instead, doing the same math in named steps: ``project`` (the fused q/k/v GEMV),
``rope_cache_write`` (one kernel: rotary of q and k, k and v into the static cache at the decode
graph's slot ``cur``, which equals the layer's ``cumulative_length`` at every step, and that count
set to ``cur + 1`` as ``StaticLayer.update`` advances it), then the attention the config names
(``packed_gqa_attention``: ``flash_decode``) and o_proj. Run 16 (H200, ChatGLM3-6B shape): the
three kernels became one of 1.4 us per layer. The captured prompt pass takes it too (``start``:
its first cache slot), for its T tokens: there the model's own forward ran ~20 kernels per layer
for the rotary of q and k (clones, multiplies, negations, stacks, concatenations) and the cache
writes (cache positions, ``index_copy_``). With a ``RotaryTable`` the kernel reads the rotary at the
tokens' positions (``position_ids``) from it rather than taking the model's per-call ``cos``/``sin``
(``llm.fast_decode.rotary_table`` says why). With ``rope_in_attention`` (``FastDecodeOptions``, off until
timed on a GPU) a decode token's rotary and cache write run inside the attention kernel instead
(``llm.kernels.rope_attention``): one launch a layer fewer. Any other call (more tokens without
``start``, a cache that is not a static one) runs the module's own forward.

It replaces only ``transformers.models.glm.modeling_glm.GlmAttention.forward`` (checked by
identity): the rotary form and the order of the fused heads are that module's.
"""

from __future__ import annotations

from typing import Any

import torch

from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.glm.modeling_glm import GlmAttention, eager_attention_forward

from llm.cache_kwarg import cache_kwarg_of
from llm.fast_decode.attention import DECODE_ATTENTION, FusedQKV, packs_heads
from llm.fast_decode.rotary_table import RotaryTable
from llm.fast_decode.stand_in import StandIn
from llm.kernels.rope_attention_op import rope_decode_attention
from llm.kernels.rope_cache_op import rope_cache_write


class AttentionStep(StandIn):
    """Stands in for ``module.forward`` (an instance attribute set by ``swap``) during a decode step
    or a prompt pass."""

    def __init__(self, fused: FusedQKV, *, slot: torch.Tensor, start: torch.Tensor | None = None,
                 table: RotaryTable | None = None, rope_in_attention: bool = False) -> None:
        super().__init__(fused.module)
        self.fused = fused
        self.slot = slot  # (1,) the decode graph's cache slot of this step's token
        self.start = start  # (1,) the cache slot of a captured prompt pass's first token (None: decode only)
        self.table = table  # the rotary's cos/sin over every cache position (None: the model's own, per call)
        self.heads = fused.sizes[0] // self.module.head_dim
        self.rope_in_attention = rope_in_attention  # decode tokens: rotary, cache write and attention in one kernel

    def forward(self, hidden_states: torch.Tensor, position_embeddings: Any = None,
                attention_mask: torch.Tensor | None = None, cache: Any = None, **kwargs: Any) -> Any:
        given = kwargs.pop("past_key_values", None)  # transformers 5.17's name for it
        cache = cache if cache is not None else given
        layer = self._static_layer(cache, hidden_states)
        if layer is None or position_embeddings is None:
            return GlmAttention.forward(self.module, hidden_states, position_embeddings, attention_mask,
                                        **{attention_cache_kwarg(): cache}, **kwargs)
        batch, tokens = hidden_states.shape[:2]
        qkv = self.fused.project(hidden_states)
        qkv = qkv.view(batch, -1) if tokens == 1 else qkv
        cos, sin = position_embeddings
        positions = kwargs.get("position_ids")
        if self.table is not None and positions is not None:
            cos, sin = self.table.cos, self.table.sin  # rows read at ``positions`` by the kernel
        else:
            positions = None
        if tokens == 1 and self._attends_in_one_kernel(batch, layer, attention_mask, kwargs):
            out = rope_decode_attention(qkv, cos, sin, self.slot, layer.keys, layer.values, layer.cumulative_length,
                                        attention_mask, scale=self._scale(), heads=self.heads, positions=positions)
            return self.module.o_proj(out.reshape(batch, tokens, -1)), None
        query = rope_cache_write(qkv, cos, sin, self.slot if tokens == 1 else self.start, layer.keys, layer.values,
                                 layer.cumulative_length, heads=self.heads, positions=positions)
        attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.module.config._attn_implementation, eager_attention_forward)
        out, _ = attend(self.module, query, layer.keys, layer.values, attention_mask, dropout=0.0,
                        scaling=self.module.scaling, **kwargs)
        return self.module.o_proj(out.reshape(batch, tokens, -1)), None

    def _attends_in_one_kernel(self, batch: int, layer: Any, mask: torch.Tensor | None, kwargs: dict[str, Any]) -> bool:
        """``rope_in_attention`` and the attention the decode step would run is ``packed_gqa_attention``'s
        packed path over the whole cache: then ``rope_decode_attention`` does the same in one launch."""
        if not self.rope_in_attention or self.module.config._attn_implementation != DECODE_ATTENTION:
            return False
        if mask is not None and (mask.dim() != 4 or mask.shape[-1] < layer.keys.shape[2]):
            return False  # a narrower mask: packed_gqa_attention narrows K/V to it
        query_shape = (batch, self.heads, 1, self.module.head_dim)
        return packs_heads(self.module, query_shape, layer.keys.shape[1], mask, 0.0, kwargs)

    def _scale(self) -> float:
        scaling = getattr(self.module, "scaling", None)
        return self.module.head_dim**-0.5 if scaling is None else scaling

    def _static_layer(self, cache: Any, hidden_states: torch.Tensor) -> Any:
        """The module's initialised static cache layer for one token per row (or, with ``start``, a
        captured prompt pass's tokens), else None."""
        if hidden_states.dim() != 3 or cache is None or (hidden_states.shape[1] != 1 and self.start is None):
            return None
        layers = getattr(cache, "layers", None)
        index = self.module.layer_idx
        if layers is None or index is None or index >= len(layers):
            return None
        layer = layers[index]
        if not getattr(layer, "is_initialized", False) or not hasattr(layer, "cumulative_length"):
            return None
        keys = layer.keys
        if keys.dim() != 4 or keys.shape[0] != hidden_states.shape[0] or keys.shape[3] != self.module.head_dim:
            return None
        return layer


def attention_cache_kwarg() -> str:
    """The keyword ``GlmAttention.forward`` takes the cache by: ``cache`` (transformers 5.2x), else
    ``past_key_values`` (5.17, the pin's lower bound). Passed by the wrong one, the cache lands in
    ``**kwargs`` unused: a prompt pass through the fallback never fills the static cache."""
    return cache_kwarg_of(GlmAttention)


def attention_steps(fused: list[FusedQKV], *, slot: torch.Tensor, start: torch.Tensor | None = None,
                    table: RotaryTable | None = None, rope_in_attention: bool = False) -> list[AttentionStep]:
    """A step for each fused q/k/v whose module is a plain ``GlmAttention`` (no forward of its
    own), writing the cache at ``slot`` (the decode graph's ``cur``), and a prompt pass's tokens
    from ``start`` on; with ``table``, the rotary read from it at each token's position; with
    ``rope_in_attention``, a decode token's rotary and cache write inside its attention kernel."""
    return [AttentionStep(f, slot=slot, start=start, table=table, rope_in_attention=rope_in_attention) for f in fused
            if type(f.module).forward is GlmAttention.forward and "forward" not in f.module.__dict__
            and f.sizes[1] == f.sizes[2] and f.sizes[0] % f.module.head_dim == 0]
