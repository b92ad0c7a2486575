"""The prompt pass's RMSNorm and SwiGLU: one Triton kernel per call instead of seven and two.

While a prompt pass is captured or run (``llm.fast_decode.prefill``, ``FastDecodeOptions.
prompt_kernels``), each RMSNorm module whose forward is transformers' own (``GlmRMSNorm``,
``Glm4RMSNorm``, ``LlamaRMSNorm``: the same code, checked by identity) runs ``llm.kernels.
rms_norm``, and each GLM MLP (``GlmMLP``, ``Glm4MLP``) with a SiLU activation runs its gate_up
projection, ``llm.kernels.swiglu`` and its down projection. Any other call (CPU, no Triton, a
kernel that failed once) runs the module's own forward. Run 19 (H200, 6B shape, 64-token
bucket): the norm's seven eager kernels took ~1.2 ms of a 9.1 ms prompt pass (its mean alone
9.0 us per call). The decode step needs neither: ``torch.compile`` fuses its norms and SwiGLU.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from llm.fast_decode.stand_in import StandIn
from llm.kernels.give_up import INTERPRET, TRITON_AVAILABLE, give_up

_broken: list[str] = []  # why the kernel was given up (llm.kernels.give_up)


def _forwards(*names: tuple[str, str]) -> tuple[Any, ...]:
    """The ``forward`` of each transformers class (model folder, class name) this transformers has."""
    forwards = []
    for model, name in names:
        try:
            module = __import__(f"transformers.models.{model}.modeling_{model}", fromlist=[name])
            forwards.append(getattr(module, name).forward)
        except (ImportError, AttributeError):  # another transformers: that model's modules stay as they are
            continue
    return tuple(forwards)


def kernel_applies(x: torch.Tensor) -> bool:
    """Whether the kernels run for ``x``: CUDA (or Triton's interpreter on CPU), floating point,
    unit stride along the last axis."""
    return (TRITON_AVAILABLE and not _broken and (x.is_cuda or INTERPRET) and x.is_floating_point() and x.dim() >= 2
            and x.stride(-1) == 1)


def _with_kernel(launch: Callable[[], torch.Tensor], fallback: Callable[[], torch.Tensor]) -> torch.Tensor:
    try:
        return launch()
    except Exception as e:  # an old Triton, an odd GPU: the modules' own forwards from now on
        give_up(_broken, e, kernel="prompt-pass kernels", instead="prompt passes keep PyTorch's norm and SwiGLU")
        return fallback()


class NormStep(StandIn):
    """Stands in for one RMSNorm module's ``forward``."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        module = self.module
        own = lambda: type(module).forward(module, hidden_states)  # noqa: E731
        if not (kernel_applies(hidden_states) and module.weight.shape == (hidden_states.shape[-1],)):
            return own()
        from llm.kernels.rms_norm import launch_rms_norm

        return _with_kernel(lambda: launch_rms_norm(hidden_states, module.weight, module.variance_epsilon), own)


class SwigluStep(StandIn):
    """Stands in for one GLM MLP's ``forward``: gate_up, the fused SwiGLU, down."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        module = self.module
        own = lambda: type(module).forward(module, hidden_states)  # noqa: E731
        if not kernel_applies(hidden_states):
            return own()
        from llm.kernels.swiglu import launch_swiglu

        gate_up = module.gate_up_proj(hidden_states)
        return module.down_proj(_with_kernel(lambda: launch_swiglu(gate_up), lambda: _swiglu(module, gate_up)))


def _swiglu(module: torch.nn.Module, gate_up: torch.Tensor) -> torch.Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return up * module.activation_fn(gate)


def prompt_steps(model: torch.nn.Module) -> list[StandIn]:
    """A step for every RMSNorm and SiLU GLM MLP of ``model`` that runs transformers' own forward."""
    from transformers.activations import SiLUActivation

    norms = _forwards(("glm", "GlmRMSNorm"), ("glm4", "Glm4RMSNorm"), ("llama", "LlamaRMSNorm"))
    mlps = _forwards(("glm", "GlmMLP"), ("glm4", "Glm4MLP"))
    steps: list[StandIn] = []
    for m in model.modules():
        own = type(m).forward
        if "forward" in m.__dict__:  # patched on the instance: its math may not be these kernels'
            continue
        if own in norms and hasattr(m, "variance_epsilon"):
            steps.append(NormStep(m))
        elif own in mlps and isinstance(getattr(m, "activation_fn", None), (SiLUActivation, torch.nn.SiLU)):
            steps.append(SwigluStep(m))
    return steps
