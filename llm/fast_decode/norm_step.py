"""The captured prompt pass's RMSNorm: one Triton kernel per call instead of seven eager ones.

Each RMSNorm module whose forward is transformers' own (``GlmRMSNorm``, ``Glm4RMSNorm`` and
``LlamaRMSNorm`` share it, checked by identity) gets ``llm.kernels.rms_norm`` in its place while
the prompt pass is captured or run (``llm.fast_decode.prefill``, through ``attention.swapped``), on
CUDA tensors; any other call
(CPU, no Triton, a kernel that failed once) runs the module's own forward. The decode step does
not need it: ``torch.compile`` fuses its norms.
"""

from __future__ import annotations

import logging
from importlib.util import find_spec
from typing import Any

import torch

logger = logging.getLogger(__name__)

TRITON_AVAILABLE = find_spec("triton") is not None
_broken: list[str] = []


def _norm_forwards() -> tuple[Any, ...]:
    """transformers' RMSNorm forwards this kernel computes (the same code in each model)."""
    forwards = []
    for module, name in (("glm", "GlmRMSNorm"), ("glm4", "Glm4RMSNorm"), ("llama", "LlamaRMSNorm")):
        try:
            models = __import__(f"transformers.models.{module}.modeling_{module}", fromlist=[name])
            forwards.append(getattr(models, name).forward)
        except (ImportError, AttributeError):  # another transformers: that model's norms stay as they are
            continue
    return tuple(forwards)


def norm_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernel runs for ``x``: CUDA (or Triton's interpreter on CPU), floating point,
    unit stride along the normalised axis, a weight of that length."""
    from llm.kernels.gemv_op import INTERPRET

    device_ok = x.is_cuda or INTERPRET
    return (TRITON_AVAILABLE and not _broken and device_ok and x.is_floating_point() and x.dim() >= 2
            and x.stride(-1) == 1 and weight.shape == (x.shape[-1],) and weight.device == x.device)


class NormStep:
    """Stands in for one RMSNorm module's ``forward`` (an instance attribute set by ``swap``)."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        module = self.module
        if norm_applies(hidden_states, module.weight):
            try:
                from llm.kernels.rms_norm import launch_rms_norm

                return launch_rms_norm(hidden_states, module.weight, module.variance_epsilon)
            except Exception as e:  # an old Triton, an odd GPU: the module's own forward from now on
                _broken.append(f"{type(e).__name__}: {e}")
                logger.warning("the RMSNorm kernel failed, prompt passes keep PyTorch's norm: %s", _broken[0])
        return type(module).forward(module, hidden_states)

    def swap(self, *, on: bool) -> None:
        if on:
            self.module.forward = self.forward
        else:
            self.module.__dict__.pop("forward", None)


def norm_steps(model: torch.nn.Module) -> list[NormStep]:
    """A step for every RMSNorm module of ``model`` that runs transformers' own forward."""
    forwards = _norm_forwards()
    return [NormStep(m) for m in model.modules()
            if type(m).forward in forwards and "forward" not in m.__dict__ and hasattr(m, "variance_epsilon")]

