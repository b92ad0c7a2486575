"""int8 -> bf16/fp16 of a whole weight, vectorised: the dequantizing copy of INT8 prompts.

Past ``gemv_configs.INT8_GEMM_ROWS`` rows (a prompt of more than 1024 tokens; 64 between run 28,
which found a wrong row tile, and run 29, which removed it), and for shapes whose ``TUNED`` entry
says "torch", an INT8 layer has no kernel of its own: its int8 weight becomes a bf16 tensor and
cuBLAS multiplies (``reference_gemv``). PyTorch's ``weight.to(torch.bfloat16)`` runs that copy as an
unvectorised elementwise kernel: on the H200, ChatGLM3-6B shape, 168 copies took 15.5 of the 25.6 ms
of a captured 128-token INT8 prompt pass (92 us each, ~1.2 TB/s of int8 read + bf16 written),
against 9.6 ms for the whole bf16 pass (run 19, docs/PERFORMANCE.md). This kernel reads 16 bytes of
int8 per thread and writes 32. The values are exact (an int8 is exact in bf16), so the layer
computes the same numbers as before.

This module imports Triton; ``int8_weight_as`` (``llm.kernels.int8_cast_op``) falls back to
``Tensor.to`` where it does not apply.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK = 4096  # int8 per program: 32 per thread of 4 warps, two 16-byte loads


@triton.jit
def _int8_cast_kernel(src_ptr, dst_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    q = tl.load(src_ptr + offs, mask=ok, other=0, eviction_policy="evict_first")
    tl.store(dst_ptr + offs, q.to(dst_ptr.dtype.element_ty), mask=ok)


def launch_int8_cast(weight: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A contiguous int8 ``weight`` as a new tensor of ``dtype`` (same shape, same values)."""
    out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
    n = weight.numel()
    _int8_cast_kernel[(triton.cdiv(n, BLOCK),)](weight, out, n, BLOCK=BLOCK, num_warps=4)
    return out
