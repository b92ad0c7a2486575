"""Triton: GLM's SwiGLU, ``up * silu(gate)`` over the gate_up projection's output, in one launch.

``GlmMLP.forward`` (Glm4's is the same) splits the gate_up output in halves and runs two eager
kernels on them, ``silu(gate)`` and the product with ``up``: in a prompt pass of the 6B shape
each reads and writes ``rows x 13696`` values (the map stage: 8192 rows, 224 MB per tensor).
Here each value is read once: silu in float32, rounded to the input dtype (as PyTorch's bf16
``silu``), times ``up`` in float32, rounded once (as its bf16 product). The decode step does not
need it: ``torch.compile`` fuses its SwiGLU. This module imports Triton; ``llm.fast_decode.
prompt_steps`` swaps it in.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 1024


@triton.jit
def _swiglu_kernel(x_ptr, out_ptr, HALF, stride_x, stride_out, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = cols < HALF
    gate = tl.load(x_ptr + row * stride_x + cols, mask=ok, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_x + HALF + cols, mask=ok, other=0.0)
    act = (gate / (1.0 + tl.exp(-gate))).to(up.dtype)
    tl.store(out_ptr + row * stride_out + cols, (up.to(tl.float32) * act.to(tl.float32)).to(out_ptr.dtype.element_ty),
             mask=ok)


def launch_swiglu(x: torch.Tensor) -> torch.Tensor:
    """``up * silu(gate)`` where ``gate, up = x.chunk(2, dim=-1)`` (unit last stride)."""
    half = x.shape[-1] // 2
    rows = x.reshape(-1, x.shape[-1])
    out = torch.empty((*x.shape[:-1], half), dtype=x.dtype, device=x.device)
    flat = out.view(-1, half)
    _swiglu_kernel[(rows.shape[0], triton.cdiv(half, BLOCK))](rows, flat, half, rows.stride(0), flat.stride(0),
                                                              BLOCK=BLOCK, num_warps=4)
    return out
