"""Triton side of programmatic dependent launch (``llm.kernels.pdl`` says when and why)."""

from __future__ import annotations

import triton
import triton.language as tl

try:
    from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait
except ImportError:  # an older Triton: llm.kernels.pdl never asks for PDL, these are never reached

    @triton.jit
    def gdc_wait():
        pass

    @triton.jit
    def gdc_launch_dependents():
        pass


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """A PDL kernel's first step: wait until the kernel before it has finished and its writes are
    visible, then let the next kernel start its programs (signalled only after the wait, see
    ``llm.kernels.pdl``). Nothing is read or written before it."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
