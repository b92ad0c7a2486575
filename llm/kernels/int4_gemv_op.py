"""``int4_runs_linear``: the "runs" INT4 layer's product (``llm.kernels.int4_gemv``) as a torch custom op.

One row (the single-user decode step) runs the Triton row kernel, 2-4 rows the rows kernel that
unpacks each weight once for all of them, each with the tile that was fastest for the shape
(timed once per process on CUDA, L2 flushed before each launch as for the other GEMVs:
``gemv_op.fastest_launch``); up to ``MAX_ROW_KERNEL_ROWS`` rows (decode batches) run in launches
of 4; more (prompts) dequantize the weight with one kernel and run one cuBLAS GEMM. An opaque
custom op for the reason ``gemv_op`` gives: the compiled decode step calls it as one extern kernel. A kernel that fails falls back to the
same arithmetic in PyTorch for good, with one warning.
"""

from __future__ import annotations

import logging
import os
from typing import Optional

import torch
import torch.nn.functional as F

from llm.int4_runs import RUN, dequantize_runs

logger = logging.getLogger(__name__)

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
# (BLOCK_N, BLOCK_K, num_warps), first = the default without timing (under capture). Compiled for
# sm_90 offline (Triton 3.6): 40-80 registers, weight loads LDG.E.64, x LDG.E.128, no shared memory
# in the loop. Every tile keeps BLOCK_K / 2 >= num_warps * 256 bytes, one 8-byte run per thread
# along K: narrower steps spread threads over rows and x went through shared memory every step
# (8 barriers; launch_int4_runs_row refuses them). Which tile wins is for the GPU to say.
ROW_CONFIGS = ((4, 2048, 4), (8, 2048, 4), (2, 2048, 4), (4, 4096, 4), (2, 4096, 4), (8, 4096, 8), (4, 1024, 2),
               (8, 1024, 2))

# The 2-4 row kernel: its registers grow with the rows (sm_90, bench.sass: 63-79 at 2 rows, 105-147 at 4), so
# narrower tiles than the one-row kernel's.
ROWS_CONFIGS = ((2, 2048, 4), (4, 2048, 4), (2, 4096, 4), (4, 1024, 2))
# Up to here rows run in launches of 2-4 rows, each unpacking the weight once for its rows and
# reading it once (0.5 byte per weight per launch); past it one dequantization (0.5 read + 2
# written) and cuBLAS (2 read): 4.5 bytes per weight whatever the rows.
MAX_ROW_KERNEL_ROWS = 8

_chosen: dict[tuple[int, int, int, int, torch.dtype], tuple[int, int, int]] = {}
_broken: list[str] = []


def int4_runs_linear(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *, group_size: int
) -> torch.Tensor:
    """``x @ ((q - z) * s).T (+ bias)`` over ``x``'s last axis, in ``x``'s dtype."""
    lead = x.shape[:-1]
    rows = x.reshape(-1, x.shape[-1])
    y = torch.ops.glmkb.int4_runs_linear(rows, packed, scales_zeros, bias, group_size)
    return y.reshape(*lead, packed.shape[0])


# typing.Optional: custom_op infers the schema from the annotations (see gemv_op).
@torch.library.custom_op("glmkb::int4_runs_linear", mutates_args=())
def int4_runs_linear_op(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: Optional[torch.Tensor],  # noqa: UP045
    group_size: int,
) -> torch.Tensor:
    """The op behind ``int4_runs_linear``: ``x`` is ``(M, K)``."""
    x = x.contiguous()
    if not _broken:
        try:
            return _launch(x, packed, scales_zeros, bias, group_size=group_size)
        except Exception as e:  # Triton too old, an odd GPU: PyTorch from now on
            _broken.append(f"{type(e).__name__}: {e}")
            logger.warning("the Triton INT4 kernels failed, INT4 layers dequantize in PyTorch: %s", _broken[0])
    weight = dequantize_runs(packed, scales_zeros, group_size=group_size, dtype=x.dtype)
    return F.linear(x, weight, None if bias is None else bias.to(x.dtype))


@int4_runs_linear_op.register_fake
def _int4_runs_linear_fake(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: Optional[torch.Tensor],  # noqa: UP045
    group_size: int,
) -> torch.Tensor:
    return x.new_empty((x.shape[0], packed.shape[0]))


def _launch(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *, group_size: int
) -> torch.Tensor:
    from llm.kernels.int4_gemv import launch_int4_runs_dequant

    rows = x.shape[0]
    if rows > MAX_ROW_KERNEL_ROWS:
        weight = launch_int4_runs_dequant(packed, scales_zeros, group_size=group_size, dtype=x.dtype)
        return F.linear(x, weight, None if bias is None else bias.to(x.dtype))
    out = torch.empty((rows, packed.shape[0]), dtype=x.dtype, device=x.device)
    for start in range(0, rows, 4):
        part = slice(start, min(start + 4, rows))
        _launch_rows(x[part], packed, scales_zeros, bias, group_size=group_size, out=out[part])
    return out


def _launch_rows(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *,
    group_size: int, out: torch.Tensor, config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """1-4 rows of ``x`` into ``out``: the one-row kernel or the 2-4 row kernel, tile ``config``
    (else ``choose_config``'s)."""
    from llm.kernels.int4_gemv import launch_int4_runs_row, launch_int4_runs_rows

    block_n, block_k, warps = config or choose_config(x, packed, scales_zeros, bias, group_size=group_size)
    launch = launch_int4_runs_row if x.shape[0] == 1 else launch_int4_runs_rows
    return launch(x, packed, scales_zeros, bias, group_size=group_size, block_n=block_n, block_k=block_k,
                  num_warps=warps, out=out)


def choose_config(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *, group_size: int
) -> tuple[int, int, int]:
    """The tile for this shape and row count (1, 2 or 3-4): the fastest of ``ROW_CONFIGS`` (one row)
    or ``ROWS_CONFIGS`` on CUDA, timed once per process outside graph capture, else the first."""
    rows, (n, k) = x.shape[0], (packed.shape[0], packed.shape[1] * 2)
    options = ROW_CONFIGS if rows == 1 else ROWS_CONFIGS
    key = (min(rows, 3), n, k, group_size, x.dtype)
    if key in _chosen:
        return _chosen[key]
    if x.device.type != "cuda":  # Triton's interpreter (tests): few programs, one per 16 outputs
        return (16, min(options[0][1], max(2 * RUN, 1 << (k - 1).bit_length())), 1)
    if torch.cuda.is_current_stream_capturing():
        return options[0]
    from llm.kernels.gemv_op import fastest_launch

    scratch = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    best = fastest_launch(list(options), lambda c: _launch_rows(x, packed, scales_zeros, bias, group_size=group_size,
                                                                out=scratch, config=c), device=x.device)
    if best is None:
        raise RuntimeError(f"no INT4 kernel config runs for {rows} rows and a {n} x {k} weight")
    logger.info("INT4 kernel, %d rows, %d x %d: %s (%.1f us)", rows, n, k, best[1], best[0] * 1e3)
    _chosen[key] = best[1]
    return best[1]


def chosen_configs() -> dict[str, str]:
    """What this process picked per shape (for bench reports)."""
    return {f"int4-runs rows={'3-4' if r == 3 else r} N={n} K={k} group={g} {dtype}": str(c)
            for (r, n, k, g, dtype), c in _chosen.items()}
