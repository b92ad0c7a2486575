"""``gemv_linear``: the Triton GEMV (``llm.kernels.gemv``) as a torch custom op, with a PyTorch fallback.

Why ``torch.library.custom_op`` and not ``triton_op`` / a bare user-defined Triton kernel under
``torch.compile`` (torch 2.11 on the lent H200, 2.13 here): the op is opaque to Dynamo and
Inductor, so the compiled decode step traces it through its fake impl (no graph break) and calls
it as one extern kernel; everything around the launch (config choice, timing candidates on first
use, the split-K scratch buffer) runs as plain Python at call time, outside tracing. With
``triton_op`` that code would have to be traceable and Inductor would autotune the kernel itself,
more moving parts on torch 2.11 for nothing: in the captured CUDA graph the extern call's launch
cost is gone, and Inductor could not fuse into a user kernel either way.

Inside a CUDA graph capture nothing is timed or compiled: the decode graph runs its step on a
side stream first (``warm_up_on_side_stream``), which tunes and compiles every shape it uses.
A kernel that fails to compile or launch (an old Triton, an odd GPU) falls back to PyTorch for
good, with one warning, rather than take the decode step down.
"""

import logging
import statistics
from collections.abc import Callable
from typing import Any, Optional

import torch
import torch.nn.functional as F

from llm.kernels.gemv_configs import (
    MAX_INT8_ROWS,
    MAX_ROWS,
    TORCH,
    TUNED_CAPABILITY,
    Choice,
    candidates,
    int8_row_limit,
    measured,
    on_tiles_changed,
    row_bucket,
    tuned,
    weight_kind,
)
from llm.kernels.give_up import INTERPRET, TRITON_AVAILABLE, give_up
from llm.kernels.int8_cast_op import int8_weight_as

logger = logging.getLogger(__name__)

KERNELS = ("triton", "torch")

_chosen: dict[tuple[object, ...], Choice] = {}  # per process: (kind, rows, N, K, dtype) -> config
on_tiles_changed(_chosen.clear)
_broken: list[str] = []  # why the kernel was given up (llm.kernels.give_up)


def gemv_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``gemv_linear`` would run the Triton kernel for ``x`` (rows <= 16, <= 64 with an int8
    weight; CUDA 16-bit activations, or any float dtype on CPU under Triton's interpreter) and
    ``weight`` (int8 or ``x``'s dtype)."""
    rows = x.numel() // max(1, x.shape[-1])
    limit = int8_row_limit() if weight.dtype == torch.int8 else MAX_ROWS
    if not TRITON_AVAILABLE or _broken or not 0 < rows <= limit or weight.dim() != 2:
        return False
    if weight.dtype not in (torch.int8, x.dtype) or weight.stride(-1) != 1 or weight.device != x.device:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the op has no backward: training (e.g. a LoRA over an INT8 base) stays on PyTorch
    if x.device.type == "cuda":
        return x.dtype in (torch.float16, torch.bfloat16)
    return INTERPRET and x.device.type == "cpu" and x.dtype.is_floating_point


def reference_gemv(
    x: torch.Tensor, weight: torch.Tensor, *, scales: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """What ``gemv_linear`` computes, in PyTorch: ``nn.Linear``'s forward for float weights (cuBLAS,
    bias fused), the int8 layer's former forward for int8; the fallback and a tuning candidate."""
    if scales is None:
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))
    y = F.linear(x, int8_weight_as(weight, x.dtype) if weight.dtype == torch.int8 else weight.to(x.dtype))
    if scales is not None:
        y = y * scales.to(x.dtype)
    return y if bias is None else y + bias.to(x.dtype)


def gemv_linear(
    x: torch.Tensor, weight: torch.Tensor, *, scales: torch.Tensor | None = None, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ weight.T`` (``* scales`` per output channel) (``+ bias``) over ``x``'s last axis, in
    ``x``'s dtype: the Triton kernel where ``gemv_applies``, else ``reference_gemv``."""
    if not gemv_applies(x, weight):
        return reference_gemv(x, weight, scales=scales, bias=bias)
    lead = x.shape[:-1]
    y = torch.ops.glmkb.gemv(x.reshape(-1, x.shape[-1]), weight, scales, bias)
    return y.reshape(*lead, weight.shape[0])


# typing.Optional, not "X | None": custom_op infers the op schema from these annotations at run
# time, and torch 2.11's inference is documented for Optional.
@torch.library.custom_op("glmkb::gemv", mutates_args=())
def gemv_op(
    x: torch.Tensor, weight: torch.Tensor, scales: Optional[torch.Tensor], bias: Optional[torch.Tensor]  # noqa: UP045
) -> torch.Tensor:
    """The op behind ``gemv_linear``: ``x`` is ``(M, K)``, M <= 16 (64 for an int8 weight)."""
    if x.stride(-1) != 1:
        x = x.contiguous()
    if not _broken:
        try:
            from llm.kernels.gemv import launch_gemv

            choice = choose_config(x, weight, scales, bias)
            if choice != TORCH:
                return launch_gemv(x, weight, scales, bias, choice)
        except Exception as e:  # Triton too old, a config the GPU cannot run: PyTorch from now on
            give_up(_broken, e, kernel="GEMV", instead="using PyTorch for small-batch linear layers")
    return reference_gemv(x, weight, scales=scales, bias=bias)


@gemv_op.register_fake
def _gemv_fake(
    x: torch.Tensor, weight: torch.Tensor, scales: Optional[torch.Tensor], bias: Optional[torch.Tensor]  # noqa: UP045
) -> torch.Tensor:
    return x.new_empty((x.shape[0], weight.shape[0]))


def choose_config(
    x: torch.Tensor, weight: torch.Tensor, scales: torch.Tensor | None, bias: torch.Tensor | None
) -> Choice:
    """The config for this shape (``llm.kernels.gemv_configs``: checked-in table, else the fastest
    candidate timed once per process on CUDA, else the heuristic), or ``TORCH`` where PyTorch
    (cuBLAS) beat every Triton config for a float weight: then "triton" means the faster of the two."""
    rows, k = x.shape
    n, int8 = weight.shape[0], weight.dtype == torch.int8
    key = (weight_kind(int8), row_bucket(rows), n, k, x.dtype)
    chosen = _chosen.get(key)
    if chosen is not None:
        return chosen
    chosen = measured(rows, n, k, int8=int8) if x.device.type == "cuda" else None
    if chosen is None and _tuned_for(x.device):
        chosen = tuned(rows, n, k, int8=int8)
    if chosen is None:
        options: list[Choice] = list(candidates(rows, n, k, int8=int8))
        if x.device.type != "cuda" or torch.cuda.is_current_stream_capturing():
            return options[0]  # not remembered: the next uncaptured CUDA call times them
        if scales is None or rows > MAX_INT8_ROWS:  # cuBLAS, or for int8 prompts the cast for it
            options.append(TORCH)
        chosen = fastest(options, x, weight, scales, bias)
    _chosen[key] = chosen
    return chosen


def _tuned_for(device: torch.device) -> bool:
    """Whether ``gemv_configs.TUNED`` was measured on this kind of GPU (its winners differ by GPU)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) == TUNED_CAPABILITY


def fastest(
    options: list[Choice],
    x: torch.Tensor,
    weight: torch.Tensor,
    scales: torch.Tensor | None,
    bias: torch.Tensor | None,
    *,
    repeats: int = 8,
) -> Choice:
    """The candidate with the least median time of one launch, each timed right after L2 is
    flushed (a 256 MiB write), since the decode step reads every weight from HBM: timed
    back to back, a 16 MiB INT8 o_proj would be served from the 50 MiB L2 and favour other tiles.
    The flush (~60 us) also keeps the GPU busy while Python launches the kernel. Candidates that
    fail to compile or run are skipped."""
    from llm.kernels.gemv import launch_gemv

    def run(c: Choice) -> torch.Tensor:
        if c == TORCH:
            return reference_gemv(x, weight, scales=scales, bias=bias)
        return launch_gemv(x, weight, scales, bias, c)

    reference = reference_gemv(x, weight, scales=scales, bias=bias)
    best = fastest_launch(options, run, device=x.device, repeats=repeats, reference=reference)
    if best is None:
        raise RuntimeError(f"no GEMV config runs for x {tuple(x.shape)} {x.dtype}, weight {tuple(weight.shape)}")
    logger.info("GEMV %s x %s %s: %s (%.1f us)", tuple(x.shape), tuple(weight.shape), weight.dtype, best[1],
                best[0] * 1e3)
    return best[1]


# A candidate's product this far from the reference (relative Frobenius error) is wrong, not
# rounded: right tiles of the 6B shapes give 1.7e-3 in bf16 at 64-512 rows, run 29's wrong one
# (256-row tiles, H100) 0.08-0.11.
WRONG_PRODUCT = 2e-2


def fastest_launch(
    options: list[Any], run: Callable[[Any], object], *, device: torch.device, repeats: int = 8,
    reference: torch.Tensor | None = None,
) -> tuple[float, Any] | None:
    """``(ms, option)`` with the least median time of ``run(option)``, each launch timed right after
    L2 is flushed (``fastest`` says why); None when no option runs. With ``reference``, an option
    whose first output is ``WRONG_PRODUCT`` away from it is skipped with a warning: timing alone
    once pinned a fast, wrong tile (run 27's 256-row INT8 tiles)."""
    flush = torch.empty(256 * 2**20, dtype=torch.int8, device=device)
    best: tuple[float, Any] | None = None
    for option in options:
        try:
            first = run(option)  # compile and warm
            if reference is not None and not _right_product(first, reference):
                logger.warning("kernel config %s skipped: its product is wrong for this shape", option)
                continue
            t = _median_launch_ms(lambda: run(option), flush=flush, repeats=repeats)
        except Exception as e:  # e.g. out of shared memory or registers for this tile
            logger.debug("kernel config %s skipped: %s", option, e)
            continue
        if best is None or t < best[0]:
            best = (t, option)
    del flush
    return best


def _median_launch_ms(launch: Callable[[], object], *, flush: torch.Tensor, repeats: int) -> float:
    """Median ms of ``launch`` over ``repeats`` CUDA-event timings, L2 flushed before each."""
    events = []
    for _ in range(repeats):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        launch()
        end.record()
        events.append((start, end))
    torch.cuda.current_stream().synchronize()
    return statistics.median(start.elapsed_time(end) for start, end in events)


def _right_product(y: object, reference: torch.Tensor) -> bool:
    """Whether ``y`` is ``reference`` up to rounding (``WRONG_PRODUCT``), NaNs and shape included. A
    reference that is not finite (overflowing activations) says nothing: every option passes, as
    before the check, rather than none (which would give the kernel up for good)."""
    if not isinstance(y, torch.Tensor) or y.shape != reference.shape:
        return False
    if not bool(torch.isfinite(reference).all()):
        return True
    return relative_error(y, reference) <= WRONG_PRODUCT  # NaN compares False


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """``|y - reference| / |reference|`` (Frobenius), in float32."""
    return ((y.float() - reference.float()).norm() / reference.float().norm().clamp_min(1e-30)).item()


def chosen_configs() -> dict[str, str]:
    """What this process picked per shape (for bench reports): ``"int8 rows=1 N=4096 K=13696"`` -> config."""
    return {f"{kind} rows={rows} N={n} K={k} {dtype}": str(c) for (kind, rows, n, k, dtype), c in _chosen.items()}
