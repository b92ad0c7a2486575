"""glmkb's INT4 weights in the layout of torch's tinygemm kernel (``aten._weight_int4pack_mm``).

Under ``torch.compile`` the dequantize-then-GEMV of ``WeightOnlyInt4Linear`` ran at 83 tok/s on
an H200 (0.35x bf16, docs/PERFORMANCE.md): Inductor unpacked the nibbles into a full-precision
temporary instead of reading only the int4 bytes. tinygemm (CUDA, sm80+, bf16 activations) is a
hand-written W4A16 kernel that reads the packed weight directly; gpt-fast uses it for INT4.

Its convention, checked against torch's own tests and the CPU twin of the op:

- weight: ``_convert_weight_to_int4pack(uint8 [N, K/2], inner_k_tiles)`` where each byte holds
  column ``2j`` in its HIGH nibble and ``2j+1`` in its low nibble (the reverse of glmkb's own
  ``pack_int4``), giving an int32 tensor ``[N/8, K/(inner_k_tiles*16), 32, inner_k_tiles/2]``
  whose first axis is independent tiles of 8 output rows (so row blocks concatenate: fused q/k/v);
- ``scales_and_zeros``: ``[K/group, N, 2]`` with ``w = (q - 8) * scale + zero``.

glmkb's ``w = (q - z) * s`` converts exactly: ``(q - z) * s = (q - 8) * s + (8 - z) * s``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

GROUP_SIZES = (32, 64, 128, 256)
INNER_K_TILES = (8, 4, 2)  # gpt-fast's default first: 16-byte loads
N_TILE = 8
K_TILE = 16
UNPACK_ROWS = 2048  # identity rows per unpacking call: bounds the transient to 2048 x N bf16


def inner_k_tiles(in_features: int) -> int | None:
    """The largest inner k-tile count whose tile width divides ``in_features`` (None: none does)."""
    return next((t for t in INNER_K_TILES if in_features % (t * K_TILE) == 0), None)


def tinygemm_available(device: torch.device) -> bool:
    """Whether ``device`` runs tinygemm: a CUDA GPU of compute capability 8.0 or newer."""
    if device.type != "cuda" or not torch.cuda.is_available() or not hasattr(torch.ops.aten, "_weight_int4pack_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0)


def tinygemm_fits(*, in_features: int, out_features: int, group_size: int) -> bool:
    """Whether a layer's shape and group size are ones the kernel accepts."""
    return (
        group_size in GROUP_SIZES
        and in_features % group_size == 0
        and out_features % N_TILE == 0
        and inner_k_tiles(in_features) is not None
    )


def high_nibble_first(q: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, K/2]`` from q ``[N, K]`` in [0, 15]: column 2j in the high nibble (tinygemm's order)."""
    q = q.to(torch.uint8)
    return ((q[:, 0::2] << 4) | q[:, 1::2]).contiguous()


def scales_and_zeros(scales: torch.Tensor, zeros: torch.Tensor, *, dtype: torch.dtype) -> torch.Tensor:
    """tinygemm's ``[K/group, N, 2]`` from glmkb's ``scales``/``zeros`` ``[N, K/group]``."""
    s, z = scales.float(), zeros.float()
    return torch.stack((s, (8.0 - z) * s), dim=-1).transpose(0, 1).contiguous().to(dtype)


def split_scales_and_zeros(packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of ``scales_and_zeros`` for integer zero points: ``(scales, zeros)`` ``[N, K/group]``
    as float32, exact while |8 - z| < 128 (``(8 - z) * s`` rounded to bf16 is then off by < 0.5 * s):
    groups whose distance from 0 is under ~8 times their range, all but degenerate ones."""
    s = packed[..., 0].float().transpose(0, 1)
    tg_zero = packed[..., 1].float().transpose(0, 1)
    return s.contiguous(), torch.round(8.0 - tg_zero / s).contiguous()


def pack_weight(q: torch.Tensor, *, inner_tiles: int) -> torch.Tensor:
    """tinygemm's int32 layout of q ``[N, K]`` (values 0..15, on the CUDA device)."""
    return torch.ops.aten._convert_weight_to_int4pack(high_nibble_first(q), inner_tiles)


def unpack_weight(
    packed: torch.Tensor, *, out_features: int, in_features: int, group_size: int,
    mm: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """q ``[N, K]`` uint8 back from tinygemm's layout, exactly: the kernel itself applied to identity
    rows with scale 1 and zero 8 computes ``(q - 8) * 1 + 8 = q``, all exact in bf16. ``mm``: another
    kernel taking the same scales and zeros (the CPU twin, ``llm.quantized_cpu``); default tinygemm."""
    mm = mm or int4pack_mm
    unit = torch.empty(in_features // group_size, out_features, 2, dtype=torch.bfloat16, device=packed.device)
    unit[..., 0], unit[..., 1] = 1.0, 8.0
    rows = []
    for start in range(0, in_features, UNPACK_ROWS):
        stop = min(start + UNPACK_ROWS, in_features)
        eye = torch.zeros(stop - start, in_features, dtype=torch.bfloat16, device=packed.device)
        eye[:, start:stop] = torch.eye(stop - start, dtype=torch.bfloat16, device=packed.device)
        rows.append(mm(eye, packed, group_size, unit).to(torch.uint8))  # [rows of K, N]
    return torch.cat(rows).transpose(0, 1).contiguous()


def int4pack_mm(x: torch.Tensor, packed: torch.Tensor, group_size: int, scales_zeros: torch.Tensor) -> torch.Tensor:
    """``x [M, K] @ W.T`` through tinygemm (x bf16, contiguous)."""
    return torch.ops.aten._weight_int4pack_mm(x, packed, group_size, scales_zeros)
