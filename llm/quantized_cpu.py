"""torch's own CPU kernels for glmkb's weight-only INT8/INT4 layers (``llm.quantization``).

Without them a CPU run dequantized each weight on every call: on the 2-core AVX-512 test machine
ChatGLM3-6B's q/k/v layer (4608 x 4096) took 27 ms per token in INT8 and 96 ms in INT4, against
3.0 ms for its float32 weight (``python -m bench.cpu_quantized``, docs/PERFORMANCE.md): CPU
generation ran 9x (INT8) and 25x (INT4) slower than unquantized. ``aten._weight_int8pack_mm``
(the int8 weight as it is, one scale per row) and ``aten._weight_int4pack_mm_for_cpu`` (the int4
weight repacked once by ``_convert_weight_to_int4pack_for_cpu``, tinygemm's ``[K/group, N, 2]``
scales and zeros) read the packed weight directly: 0.55 / 0.25 ms there, 0.65 / 0.91 ms with
only AVX2 dispatched (``ATEN_CPU_CAPABILITY=avx2``).

Both are fast only with bfloat16 activations (float32 inputs take a scalar path: 5-12 ms on a
4096 x 4096 layer), so they run when the layer's input is bfloat16 on the CPU;
``llm.loading.resolve_dtype`` makes bfloat16 the CPU default for int8/int4 models. Float32 CPU
runs keep the dequantizing path. Prompts of 128 tokens are 1.5-4x slower on these kernels than
bf16 weights on oneDNN, and 2-9x faster than the dequantizing path was.
"""

from __future__ import annotations

import torch

from llm import int4_tinygemm as tinygemm

# The CPU int4 packing works in blocks of 64 output rows; N must be a multiple of 16.
INT4_BLOCK_ROWS = 64
INT4_ROW_MULTIPLE = 16


def cpu_kernels_run(x: torch.Tensor) -> bool:
    """Whether ``x`` (a layer's input) takes the CPU kernels: bfloat16 on the CPU, no autograd."""
    return (
        x.device.type == "cpu"
        and x.dtype == torch.bfloat16
        and not (torch.is_grad_enabled() and x.requires_grad)
        and hasattr(torch.ops.aten, "_weight_int8pack_mm")
    )


def int8_linear(x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``x @ (weight * scales).T + bias`` by ``_weight_int8pack_mm`` (x bfloat16 on the CPU)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.ops.aten._weight_int8pack_mm(rows, weight, scales.to(x.dtype))
    y = y.reshape(*x.shape[:-1], weight.shape[0])
    return y if bias is None else y + bias.to(x.dtype)


def int4_fits(*, out_features: int, in_features: int, group_size: int) -> bool:
    """Whether the CPU int4 kernel takes this shape."""
    return (
        hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")
        and out_features % INT4_ROW_MULTIPLE == 0
        and in_features % group_size == 0
        and group_size % 2 == 0
    )


def int4_rows_concatenate(out_features: int) -> bool:
    """Whether a layer's packed rows can be concatenated with the next one's (fused q/k/v): only
    at a multiple of the packing's 64-row blocks."""
    return out_features % INT4_BLOCK_ROWS == 0


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """The CPU kernel's uint8 layout of q ``[N, K]`` (values 0..15)."""
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1)


def scales_and_zeros(scales: torch.Tensor, zeros: torch.Tensor) -> torch.Tensor:
    """tinygemm's ``[K/group, N, 2]`` bfloat16 scales and zeros, which the CPU kernel takes too."""
    return tinygemm.scales_and_zeros(scales, zeros, dtype=torch.bfloat16)


def unpack_int4(packed: torch.Tensor, *, out_features: int, in_features: int, group_size: int) -> torch.Tensor:
    """q ``[N, K]`` uint8 back from the CPU layout, exactly (tinygemm's identity-rows unpacking, run
    by the CPU kernel)."""
    return tinygemm.unpack_weight(packed, out_features=out_features, in_features=in_features, group_size=group_size,
                                  mm=torch.ops.aten._weight_int4pack_mm_for_cpu)


def int4_linear(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *, group_size: int
) -> torch.Tensor:
    """``x @ W.T + bias`` by ``_weight_int4pack_mm_for_cpu`` (x bfloat16 on the CPU)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    y = torch.ops.aten._weight_int4pack_mm_for_cpu(rows, packed, group_size, scales_zeros)
    y = y.reshape(*x.shape[:-1], packed.shape[0])
    return y if bias is None else y + bias.to(x.dtype)
