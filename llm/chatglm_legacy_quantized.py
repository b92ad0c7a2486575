"""ChatGLM's own INT4/INT8 checkpoints (``quantization_bit`` 4 or 8, e.g. THUDM/chatglm2-6b-int4) on
glmkb's weight-only layers, without the folder's remote code or cpm_kernels.

ChatGLM's ``quantization.py`` (``QuantizedLinear``) stores each layer's four linear weights
(``query_key_value``, ``dense``, ``dense_h_to_4h``, ``dense_4h_to_h``) as symmetric integers with
one scale per output row: ``weight_scale = max|w| / (2**(bits-1) - 1)`` (``[N]``, fp16) and
``weight = round(w / weight_scale)`` stored as int8. At 4 bits two values share a byte
(``compress_int4_weight``): column 2j in the high nibble, 2j+1 in the low one, each a signed
nibble. Embeddings, norms, biases and the output layer stay fp16.

Both map exactly onto glmkb's layers (``llm.quantization``):

- INT8 is ``WeightOnlyInt8Linear``'s own format: ``w = q * scale`` per row.
- INT4 is ``WeightOnlyInt4Linear`` with ``q = s + 8`` and zero point 8 in every group, each group
  scaled by its row's scale: ``(q - 8) * scale = s * scale``.

So these folders load with the same kernels, fast decode path and memory as a model glmkb
quantized itself, and, as there, the output layer becomes INT8 per row. The one rounding is
the scales' cast to the compute dtype: exact in float16/float32, within 2^-9 relative in
bfloat16 (a GPU's default).
"""

from __future__ import annotations

import re

import torch
from torch import nn

from llm.errors import ModelLoadError
from llm.int4_tinygemm import GROUP_SIZES
from llm.quantization import WeightOnlyInt4Linear, WeightOnlyInt8Linear, pack_int4

KINDS = {4: "int4", 8: "int8"}
# Native names of the linear layers ChatGLM's quantize() replaces (after llm.chatglm_legacy_weights renames them).
_QUANTIZED_TENSOR = re.compile(
    r"^(?P<module>model\.layers\.\d+\.(?:self_attn\.[qkvo]_proj|mlp\.gate_up_proj|mlp\.down_proj))"
    r"\.(?P<part>weight|weight_scale|bias)$"
)


def stored_kind(bits: int, requested: str, *, folder: object) -> str:
    """The weight-only kind a ``quantization_bit`` checkpoint loads as; ``requested`` (``llm.quantization``)
    may be "none" (take the checkpoint's) or the same kind, never another one."""
    kind = KINDS[bits]
    if requested not in ("none", kind):
        raise ModelLoadError(
            f"{folder} holds ChatGLM's own {kind.upper()} weights (quantization_bit {bits} in config.json), so "
            f"llm.quantization {requested} cannot be applied; set llm.quantization to {kind} or none, "
            "or load the full-precision release"
        )
    return kind


def unpack_chatglm_int4(packed: torch.Tensor) -> torch.Tensor:
    """Signed values in [-8, 7] (int8 ``[N, K]``) from ChatGLM's int8 ``[N, K/2]`` (high nibble first)."""
    wide = packed.to(torch.int16)
    high = wide >> 4  # arithmetic shift: the high nibble keeps the byte's sign
    low = ((wide & 0x0F) ^ 0x08) - 0x08  # sign-extend the low nibble
    return torch.stack((high, low), dim=-1).flatten(-2).to(torch.int8)


def group_size_for(in_features: int, preferred: int) -> int:
    """A group size for per-row scales (any one is exact): ``preferred`` if it divides the inputs,
    else the largest tinygemm group that does, else the whole row."""
    for size in (preferred, *sorted(GROUP_SIZES, reverse=True)):
        if in_features % size == 0:
            return size
    return in_features


def int8_layer(
    weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, *, dtype: torch.dtype
) -> nn.Module:
    """``WeightOnlyInt8Linear`` over ChatGLM's int8 weight and per-row scale."""
    return WeightOnlyInt8Linear.from_quantized(weight, scale.to(dtype), None if bias is None else bias.to(dtype))


def int4_layer(
    weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, *, dtype: torch.dtype, group_size: int,
    int4_kernel: str,
) -> nn.Module:
    """``WeightOnlyInt4Linear`` over ChatGLM's packed int4 weight: q = s + 8, zero 8, the row's scale per group."""
    q = (unpack_chatglm_int4(weight).to(torch.int16) + 8).to(torch.uint8)
    out_features, in_features = q.shape
    group = group_size_for(in_features, group_size)
    groups = in_features // group
    scales = scale.to(dtype)[:, None].expand(out_features, groups).contiguous()
    zeros = torch.full((out_features, groups), 8.0, dtype=dtype)
    return WeightOnlyInt4Linear.from_quantized(
        pack_int4(q), scales, zeros, None if bias is None else bias.to(dtype), group_size=group,
        int4_kernel=int4_kernel,
    )


class QuantizedLinears:
    """Collects each quantized linear's tensors (``weight``, ``weight_scale``, ``bias``) as shards
    stream by, and puts its glmkb layer in the model as soon as it is complete."""

    def __init__(
        self, model: nn.Module, *, bits: int, dtype: torch.dtype, group_size: int, int4_kernel: str
    ) -> None:
        self.model, self.bits, self.dtype = model, bits, dtype
        self.group_size, self.int4_kernel = group_size, int4_kernel
        self.pending: dict[str, dict[str, torch.Tensor]] = {}

    def takes(self, name: str) -> bool:
        """Whether native tensor ``name`` belongs to a quantized linear."""
        return _QUANTIZED_TENSOR.match(name) is not None

    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Keep one tensor; build and place its layer once weight, scale (and bias, if any) are in."""
        match = _QUANTIZED_TENSOR.match(name)
        if match is None:
            raise ModelLoadError(f"internal: {name} is not part of a quantized linear layer")
        module_name = match["module"]
        parts = self.pending.setdefault(module_name, {})
        parts[match["part"]] = tensor
        if self._complete(module_name, parts):
            del self.pending[module_name]
            self._place(module_name, self._build(parts))

    def check_done(self, folder: object) -> None:
        """Every quantized linear was built (the shard reader has already checked that no tensor is missing)."""
        if self.pending:
            name = next(iter(self.pending))
            raise ModelLoadError(f"internal: {name} of {folder} was not completed ({sorted(self.pending[name])})")

    def _complete(self, module_name: str, parts: dict[str, torch.Tensor]) -> bool:
        linear = self.model.get_submodule(module_name)
        needed = {"weight", "weight_scale"} | ({"bias"} if getattr(linear, "bias", None) is not None else set())
        return needed <= parts.keys()

    def _build(self, parts: dict[str, torch.Tensor]) -> nn.Module:
        weight, scale, bias = parts["weight"], parts["weight_scale"], parts.get("bias")
        if self.bits == 8:
            return int8_layer(weight, scale, bias, dtype=self.dtype)
        return int4_layer(weight, scale, bias, dtype=self.dtype, group_size=self.group_size,
                          int4_kernel=self.int4_kernel)

    def _place(self, module_name: str, layer: nn.Module) -> None:
        parent_name, _, child = module_name.rpartition(".")
        setattr(self.model.get_submodule(parent_name), child, layer)
