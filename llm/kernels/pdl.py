"""Programmatic dependent launch (PDL) of the decode path's Triton kernels: whether to use it.

A decode step is ~300 small kernels in one CUDA graph, and each starts its first program only
once the one before it has finished: every boundary pays a launch and a ramp-up. Launched with
the PDL attribute (Hopper and later; ``launch_pdl`` in Triton), a kernel's programs may be
placed on the SMs once every program of the kernel before it has signalled
``griddepcontrol.launch_dependents``, and they run ``griddepcontrol.wait`` before touching
memory (``llm.kernels.grid_dependency.wait_for_inputs``). Measured on the H200, ChatGLM3-6B shape,
one decode step back to back (run 18, ``docs/PERFORMANCE.md``): INT8 2191 -> 2150 us with
glmkb's Triton kernels on PDL, 2062 us with Inductor's too (its ``triton.enable_pdl``); bf16
3387 -> 3356 us (ours). Letting the GEMVs pull their first weight tile into L2 before the wait
made both slower (INT8 2393 / 2271 us, bf16 3537 us: the later waves' prefetches only doubled
their requests), so the kernels wait first.

Safety, which every PDL kernel here keeps, as Inductor's do: wait before any load or store,
signal only after the wait. Then a kernel starts only once the one before it has passed its own
wait, i.e. once everything before that one has finished, so any read of an earlier kernel's
output, or any write over memory it read, is ordered as in plain stream order.

This module imports neither Triton nor CUDA state at import time; ``pdl_launches`` switches it
per thread (the decode graph's ``FastDecodeOptions.pdl``) and ``launch_pdl`` is what the kernel
launchers ask.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache

import torch

_WANTED: ContextVar[bool] = ContextVar("glmkb_pdl", default=True)


@contextmanager
def pdl_launches(enabled: bool) -> Iterator[None]:
    """Kernels launched inside this block use PDL where supported (``enabled``) or never."""
    token = _WANTED.set(enabled)
    try:
        yield
    finally:
        _WANTED.reset(token)


def launch_pdl(device: torch.device) -> bool:
    """Whether a Triton kernel launched now on ``device`` uses PDL."""
    return _WANTED.get() and device.type == "cuda" and _pdl_supported(device.index or 0)


@cache
def _pdl_supported(index: int) -> bool:
    """sm_90+ (the ``griddepcontrol`` instructions), a Triton that can emit and launch them, and
    not Triton's interpreter (it runs no inline assembly)."""
    if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.get_device_capability(index)[0] < 9:
        return False
    try:
        from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait  # noqa: F401
    except ImportError:
        return False
    return True
