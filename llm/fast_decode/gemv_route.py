"""Which GEMV kernel the decode step's linear layers run (``FastDecodeOptions.gemv_kernel``).

- "auto" (default, the measured choice) and "triton": every ``nn.Linear`` (LM head and the fused
  q/k/v included) is swapped for a ``GemvLinear`` stand-in sharing its tensors for the duration of
  the step, and INT8 layers run the Triton GEMV too. ``gemv_linear`` picks per shape between its
  tiles and cuBLAS (checked-in winners on sm90, else timed on first use), so a shape cuBLAS serves
  better stays there. Run 15 (H200, M = 1): the Triton tiles beat cuBLAS on every ChatGLM3-6B
  GEMV, 100.9 against 121.1 us per layer (run 14's tiles had lost on every one);
- "torch": both in PyTorch (INT8 dequantized under ``torch.compile``, as before the kernel).

Like the fused q/k/v stand-ins (``attention.decode_forward``) this only moves Python objects
around the compiled call; the captured CUDA graph keeps whatever kernels ran inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from llm.kernels import gemv_applies, gemv_linear

GemvKernel = Literal["auto", "triton", "torch"]


class GemvLinear(nn.Module):
    """Stands in for an ``nn.Linear``: the Triton GEMV at <= 16 rows, ``F.linear`` otherwise."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.weight, self.bias = weight, bias  # the layer's own tensors (Parameters), shared, never copied

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if gemv_applies(x, self.weight):
            return gemv_linear(x, self.weight, bias=self.bias)
        return F.linear(x, self.weight, self.bias)


@dataclass
class GemvRoute:
    """One model's layers as ``kernel`` wants them during a decode step (``swap(on=...)``)."""

    kernel: GemvKernel
    linears: list[tuple[nn.Module, str, nn.Module, nn.Module]] = field(default_factory=list)
    """(parent, attribute, the nn.Linear, its GemvLinear stand-in) for kernel "triton"."""
    int8: list[nn.Module] = field(default_factory=list)
    """WeightOnlyInt8Linear layers (fused q/k/v projections included), whose ``kernel`` is set."""
    fused: list[tuple[Any, nn.Module]] = field(default_factory=list)
    """(FusedQKV of plain linear layers, the GemvLinear its ``project`` uses while on)."""
    saved: list[str] = field(default_factory=list)

    def swap(self, *, on: bool) -> None:
        """Put the stand-ins and kernel choices in place (``on``) or back as they were."""
        for parent, name, linear, stand_in in self.linears:
            current, wanted = (linear, stand_in) if on else (stand_in, linear)
            if getattr(parent, name) is current:  # q_proj may be a fused q/k/v stand-in just now
                setattr(parent, name, wanted)
        for f, stand_in in self.fused:
            f.linear = stand_in if on else None
        if on:
            self.saved[:] = [layer.kernel for layer in self.int8]
            for layer in self.int8:
                layer.kernel = "torch" if self.kernel == "torch" else "triton"
        else:
            for layer, kernel in zip(self.int8, self.saved, strict=True):
                layer.kernel = kernel
            self.saved.clear()


def gemv_route(model: nn.Module, fused: list[Any], kernel: GemvKernel) -> GemvRoute | None:
    """The route for ``kernel`` over ``model`` and its fused q/k/v."""
    from llm.quantization import WeightOnlyInt8Linear

    route = GemvRoute(kernel)
    modules = [*model.modules(), *(f.projection for f in fused if f.projection is not None)]
    route.int8 = [m for m in modules if isinstance(m, WeightOnlyInt8Linear)]
    if kernel in ("auto", "triton"):
        for parent in model.modules():
            for name, child in parent.named_children():
                if type(child) is nn.Linear:
                    route.linears.append((parent, name, child, GemvLinear(child.weight, child.bias)))
        route.fused = [(f, GemvLinear(f.weight, f.bias)) for f in fused if f.projection is None]
    return route
