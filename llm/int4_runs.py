"""glmkb's "runs" INT4 layout, read by the Triton W4A16 GEMV (``llm.kernels.int4_gemv``).

Each run of 16 input columns is 8 bytes: byte ``i`` holds column ``i`` in its low nibble and
column ``8 + i`` in its high nibble, so one thread's 8-byte load of a weight row lines up with
two 16-byte loads of x (columns 0-7 and 8-15) in one register layout (the kernel's docstring says
why that matters). Scales and integer zero points travel as one int32 per row and group: the
bf16 scale in the low 16 bits, the bf16 zero in the high 16 (both exact copies of glmkb's
``scales`` / ``zeros``, so the form converts back bit for bit).

This module needs only PyTorch (``llm.kernels.gemv_op`` says whether Triton is there); the kernels import
Triton.
"""

from __future__ import annotations

import torch

from llm.kernels.gemv_op import INTERPRET, TRITON_AVAILABLE

RUN = 16  # columns per run
GROUP_SIZES = (32, 64, 128, 256)


def runs_available(device: torch.device) -> bool:
    """Whether the Triton kernels can run on ``device``: CUDA with Triton, or the CPU under
    Triton's interpreter (``TRITON_INTERPRET=1``, the tests)."""
    if not TRITON_AVAILABLE:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available()
    return device.type == "cpu" and INTERPRET


def runs_fit(*, in_features: int, group_size: int) -> bool:
    """Whether a layer's shape and group size are ones the layout takes."""
    return group_size in GROUP_SIZES and in_features % group_size == 0 and in_features % RUN == 0


def pack_runs(q: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K/2]`` from q ``[N, K]`` (values 0..15, K a multiple of 16)."""
    n, k = q.shape
    runs = q.to(torch.uint8).view(n, k // RUN, 2, RUN // 2)
    return (runs[:, :, 0] | (runs[:, :, 1] << 4)).reshape(n, k // 2).contiguous()


def unpack_runs(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_runs``: q ``[N, K]`` uint8."""
    n, half = packed.shape
    runs = packed.view(n, half // (RUN // 2), RUN // 2)
    return torch.stack((runs & 0x0F, runs >> 4), dim=2).reshape(n, half * 2)


def pack_scales_zeros(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """int32 ``[N, K/group]``: bf16 ``scale`` in the low 16 bits, bf16 ``zero`` in the high 16."""
    s = scales.to(torch.bfloat16).contiguous().view(torch.int16).to(torch.int32) & 0xFFFF
    z = zeros.to(torch.bfloat16).contiguous().view(torch.int16).to(torch.int32)
    return (s | (z << 16)).contiguous()


def unpack_scales_zeros(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scales, zeros)`` bf16 ``[N, K/group]`` back from ``pack_scales_zeros``."""
    s = (packed & 0xFFFF).to(torch.int16).view(torch.bfloat16)
    z = (packed >> 16).to(torch.int16).view(torch.bfloat16)
    return s.contiguous(), z.contiguous()


def dequantize_runs(
    packed: torch.Tensor, scales_zeros: torch.Tensor, *, group_size: int, dtype: torch.dtype
) -> torch.Tensor:
    """``(q - z) * s`` ``[N, K]`` in ``dtype``, computed in float32 as the kernels do (the fallback)."""
    q = unpack_runs(packed).float()
    scales, zeros = unpack_scales_zeros(scales_zeros)
    n = q.shape[0]
    w = (q.view(n, -1, group_size) - zeros.float().unsqueeze(-1)) * scales.float().unsqueeze(-1)
    return w.view(n, -1).to(dtype)
