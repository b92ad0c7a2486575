"""``int4_runs_linear``: the "runs" INT4 layer's product (``llm.kernels.int4_gemv``) as a torch custom op.

One row (the single-user decode step) runs the Triton row kernel, 2-4 rows the rows kernel that
unpacks each weight once for all of them, each with the tile that was fastest for the shape
(timed once per process on CUDA, L2 flushed before each launch as for the other GEMVs:
``gemv_op.fastest_launch``); up to ``MAX_ROW_KERNEL_ROWS`` rows (decode batches) run in launches
of 4. Up to ``MAX_GEMM_ROWS`` (larger decode batches, short prompts) the INT4 GEMM
(``int4_gemm``) or dequantizing the weight with one kernel and one cuBLAS GEMM, whichever was
faster for the shape and row bucket; past it (prompts) always the latter. An opaque custom op
for the reason ``gemv_op`` gives: the compiled decode step calls it as one extern kernel. A
kernel that fails falls back to the same arithmetic in PyTorch for good, with one warning.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
import torch.nn.functional as F

from llm.int4_runs import RUN, dequantize_runs
from llm.kernels.gemv_configs import TUNED_CAPABILITY, measured_int4_tile, on_tiles_changed
from llm.kernels.give_up import give_up

logger = logging.getLogger(__name__)

# (BLOCK_N, BLOCK_K, num_warps), first = the default without timing (under capture). Compiled for
# sm_90 offline (Triton 3.6): 40-80 registers, weight loads LDG.E.64, x LDG.E.128, no shared memory
# in the loop. Every tile keeps BLOCK_K / 2 >= num_warps * 256 bytes, one 8-byte run per thread
# along K: narrower steps spread threads over rows and x went through shared memory every step
# (8 barriers; launch_int4_runs_row refuses them). Which tile wins is for the GPU to say.
ROW_CONFIGS = ((16, 2048, 4), (8, 2048, 4), (4, 2048, 2), (4, 1024, 2), (4, 2048, 4), (16, 4096, 8), (8, 4096, 8),
               (4, 4096, 4))
# Measured winners at one row on the H200 (``python -m bench.row_tiles``, 32-tile grid; runs 21b
# and 21c agree within 2 %: docs/bench-results/row_tiles.run21[bc].h200.json), the ChatGLM3-6B
# decode shapes (N, K, group) -> tile; ``llm.gemv_tiles`` (``gemv_configs.use_measured_tiles``)
# overrides them, other shapes are timed on first use. The op's own timing (one eager launch
# after an L2 flush, median of 8) had picked a tile of 8.3 us for q/k/v where the best took 6.1
# (run 21).
ROW_TUNED = {
    (4608, 4096, 128): (4, 1024, 2),  # q/k/v fused: 5.70 us
    (4096, 4096, 128): (4, 2048, 2),  # o_proj: 4.90 us
    (27392, 4096, 128): (16, 2048, 4),  # gate_up: 20.4 us
    (4096, 13696, 128): (8, 2048, 4),  # down: 12.6 us
}

# The 2-4 row kernel: its registers grow with the rows (sm_90, bench.sass: 63-79 at 2 rows, 105-147 at 4), so
# narrower tiles than the one-row kernel's.
ROWS_CONFIGS = ((2, 2048, 4), (4, 2048, 4), (2, 4096, 4), (4, 1024, 2))
# Up to here rows run in launches of 2-4 rows, each unpacking the weight once for its rows and
# reading it once (0.5 byte per weight per launch); past it the GEMM (0.5 byte per weight) or one
# dequantization (0.5 read + 2 written) and cuBLAS (2 read): 4.5 bytes per weight whatever the rows.
MAX_ROW_KERNEL_ROWS = 8
# The INT4 GEMM's tiles, (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages[, split_k[, weight_first]]),
# first = the default without timing. BLOCK_K divides the group (one scale per step); compiled for
# sm_90 offline (bench.sass): 95-132 registers, no spills. Past MAX_GEMM_ROWS a prompt's GEMM is
# compute-bound and cuBLAS's, after one dequantization, is the one to run. The first three (session 35)
# take 4 K-slices (and the last two the weight as wgmma's A operand): at 16-64 rows one slice fills
# only 64-72 of 132 SMs for the 4096-wide outputs. Run 36 (H100, ``bench.gemv``'s INT4 sweep over
# the 6B shapes, docs/bench-results/int4_gemm_tiles.run36.h100.json), us, best tile before -> after:
# 16 rows (16 streams' decode steps) q/k/v 20.4 -> 15.2, o_proj 15.9 -> 13.1, gate_up 52.9 -> 50.7,
# down 59.6 -> 40.1; 64 rows (every short prompt) q/k/v 39.1 -> 26.8, o_proj 28.1 -> 19.0, gate_up
# 156.9 -> 108.7, down 82.2 -> 62.0 (dequantize + cuBLAS: 42-352).
GEMM_CONFIGS: tuple[tuple[int, ...], ...] = (
    (16, 64, 128, 4, 3, 4), (16, 128, 128, 4, 3, 4, 1), (64, 128, 64, 8, 3, 4, 1),
    (16, 64, 128, 4, 3), (16, 32, 128, 4, 4), (16, 64, 64, 4, 4), (16, 64, 32, 4, 4),
    (32, 64, 128, 4, 3), (64, 64, 64, 4, 3), (64, 64, 32, 4, 3), (64, 128, 128, 8, 3),
    (128, 128, 64, 8, 3),
)
# More K-sliced / weight-first tiles that lost every 6B shape in run 36: swept by ``python -m bench.gemv``
# only (each option the op times adds a compile to its first use).
SPLIT_GEMM_CONFIGS: tuple[tuple[int, ...], ...] = (
    (16, 64, 128, 4, 3, 4, 1), (64, 64, 128, 4, 3, 4), (64, 64, 128, 4, 3, 4, 1), (64, 128, 128, 8, 3, 2, 1),
)
MAX_GEMM_ROWS = 256
DEQUANTIZE = "dequantize + cuBLAS"

Config = tuple[int, ...] | str
_chosen: dict[tuple[int, int, int, int, torch.dtype], Config] = {}
on_tiles_changed(_chosen.clear)
_broken: list[str] = []  # why the kernel was given up (llm.kernels.give_up)


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
            give_up(_broken, e, kernel="INT4 kernels", instead="INT4 layers dequantize in PyTorch")
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
    rows = x.shape[0]
    if rows > MAX_ROW_KERNEL_ROWS:
        if rows <= MAX_GEMM_ROWS:
            return _launch_gemm(x, packed, scales_zeros, bias, group_size=group_size)
        return _dequantize_and_multiply(x, packed, scales_zeros, bias, group_size=group_size)
    out = torch.empty((rows, packed.shape[0]), dtype=x.dtype, device=x.device)
    for start in range(0, rows, 4):
        part = slice(start, min(start + 4, rows))
        _launch_rows(x[part], packed, scales_zeros, bias, group_size=group_size, out=out[part])
    return out


def _dequantize_and_multiply(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *, group_size: int
) -> torch.Tensor:
    """The weight dequantized by one kernel, then cuBLAS: 4.5 bytes per weight whatever the rows."""
    from llm.kernels.int4_gemv import launch_int4_runs_dequant

    weight = launch_int4_runs_dequant(packed, scales_zeros, group_size=group_size, dtype=x.dtype)
    return F.linear(x, weight, None if bias is None else bias.to(x.dtype))


def _launch_gemm(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *,
    group_size: int, config: Config | None = None,
) -> torch.Tensor:
    """9 to ``MAX_GEMM_ROWS`` rows: the INT4 GEMM with tile ``config`` or dequantize + cuBLAS
    (``DEQUANTIZE``), else ``choose_gemm_config``'s choice."""
    from llm.kernels.int4_gemm import launch_int4_runs_gemm

    config = config or choose_gemm_config(x, packed, scales_zeros, bias, group_size=group_size)
    if config == DEQUANTIZE:
        return _dequantize_and_multiply(x, packed, scales_zeros, bias, group_size=group_size)
    block_m, block_n, block_k, warps, stages, split, weight_first = gemm_tile(config)
    return launch_int4_runs_gemm(x, packed, scales_zeros, bias, group_size=group_size, block_m=block_m,
                                 block_n=block_n, block_k=block_k, num_warps=warps, num_stages=stages,
                                 split_k=split, weight_first=bool(weight_first))


def gemm_tile(config: tuple[int, ...]) -> tuple[int, int, int, int, int, int, int]:
    """A ``GEMM_CONFIGS`` entry with its defaults filled: one K-slice, x as the A operand."""
    block_m, block_n, block_k, warps, stages, *rest = config
    split = rest[0] if rest else 1
    weight_first = rest[1] if len(rest) > 1 else 0
    return block_m, block_n, block_k, warps, stages, split, weight_first


def row_bucket(rows: int) -> int:
    """The GEMM's timing bucket for ``rows``: the next power of two, at least 16."""
    return max(16, 1 << (rows - 1).bit_length())


def gemm_options(rows: int, group_size: int, configs: tuple[tuple[int, ...], ...] | None = None) -> list[Config]:
    """The tiles of ``configs`` (``GEMM_CONFIGS``) that fit ``rows``' bucket and the group
    (``BLOCK_M`` <= bucket, ``BLOCK_K`` divides the group), then ``DEQUANTIZE``."""
    bucket = row_bucket(rows)
    configs = GEMM_CONFIGS if configs is None else configs
    tiles: list[Config] = [c for c in configs if c[0] <= bucket and group_size % c[2] == 0]
    return [*tiles, DEQUANTIZE]


def choose_gemm_config(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *, group_size: int
) -> Config:
    """For 9 to ``MAX_GEMM_ROWS`` rows: the fastest of ``gemm_options`` on CUDA for this shape and
    row bucket (timed once per process outside graph capture, on these rows), else the first."""
    rows, (n, k) = x.shape[0], (packed.shape[0], packed.shape[1] * 2)
    key = (row_bucket(rows), n, k, group_size, x.dtype)
    if key in _chosen:
        return _chosen[key]
    options = gemm_options(rows, group_size)
    if x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return options[0]
    from llm.kernels.gemv_op import fastest_launch

    reference = _dequantize_and_multiply(x, packed, scales_zeros, bias, group_size=group_size)
    best = fastest_launch(options, lambda c: _launch_gemm(x, packed, scales_zeros, bias, group_size=group_size,
                                                          config=c), device=x.device, reference=reference)
    if best is None:
        raise RuntimeError(f"no INT4 GEMM config runs for {rows} rows and a {n} x {k} weight")
    logger.info("INT4 GEMM, %d rows, %d x %d: %s (%.1f us)", rows, n, k, best[1], best[0] * 1e3)
    _chosen[key] = best[1]
    return best[1]


def _launch_rows(
    x: torch.Tensor, packed: torch.Tensor, scales_zeros: torch.Tensor, bias: torch.Tensor | None, *,
    group_size: int, out: torch.Tensor, config: tuple[int, int, int] | None = None,
) -> torch.Tensor:
    """1-4 rows of ``x`` into ``out``: the one-row kernel or the 2-4 row kernel, tile ``config``
    (else ``choose_row_config``'s)."""
    from llm.kernels.int4_gemv import launch_int4_runs_row, launch_int4_runs_rows

    block_n, block_k, warps = config or choose_row_config(x, packed, scales_zeros, bias, group_size=group_size)
    launch = launch_int4_runs_row if x.shape[0] == 1 else launch_int4_runs_rows
    return launch(x, packed, scales_zeros, bias, group_size=group_size, block_n=block_n, block_k=block_k,
                  num_warps=warps, out=out)


def choose_row_config(
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
    tuned = measured_int4_tile(n, k) if rows == 1 and group_size == 128 else None
    if tuned is None and rows == 1 and torch.cuda.get_device_capability(x.device) == TUNED_CAPABILITY:
        tuned = ROW_TUNED.get((n, k, group_size))
    if tuned is not None:
        _chosen[key] = tuned
        return tuned
    if torch.cuda.is_current_stream_capturing():
        return options[0]
    from llm.kernels.gemv_op import fastest_launch

    scratch = torch.empty((rows, n), dtype=x.dtype, device=x.device)
    reference = _dequantize_and_multiply(x, packed, scales_zeros, bias, group_size=group_size)
    best = fastest_launch(list(options), lambda c: _launch_rows(x, packed, scales_zeros, bias, group_size=group_size,
                                                                out=scratch, config=c), device=x.device,
                          reference=reference)
    if best is None:
        raise RuntimeError(f"no INT4 kernel config runs for {rows} rows and a {n} x {k} weight")
    logger.info("INT4 kernel, %d rows, %d x %d: %s (%.1f us)", rows, n, k, best[1], best[0] * 1e3)
    _chosen[key] = best[1]
    return best[1]


def chosen_configs() -> dict[str, str]:
    """What this process picked per shape (for bench reports)."""
    return {f"int4-runs rows={_rows_label(r)} N={n} K={k} group={g} {dtype}": str(c)
            for (r, n, k, g, dtype), c in _chosen.items()}


def _rows_label(key_rows: int) -> str:
    """``_chosen``'s row key as the rows it stands for: 1, 2, 3-4, or a GEMM bucket such as 9-16."""
    if key_rows < 16:
        return "3-4" if key_rows == 3 else str(key_rows)
    return f"{MAX_ROW_KERNEL_ROWS + 1 if key_rows == 16 else key_rows // 2 + 1}-{key_rows}"
