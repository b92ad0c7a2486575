"""Whether glmkb's Triton kernels can run here, and each kernel family given up at its first failure.

Every op module (``llm.kernels.*_op``, ``llm.fast_decode.prompt_steps``) runs its kernel where it
applies and the PyTorch it replaces otherwise. A kernel that fails to compile or launch (a Triton
too old, a GPU it cannot compile for) must neither take a decode step down nor warn at every step:
each family holds a list of why it was given up (``_broken``), which ``give_up`` fills: the
first failure is logged once, naming what runs instead, and the family stays off for the rest of
the process. A plain list, not a class of its own: the op modules test it inside compiled decode
steps, and torch 2.11's Dynamo read an empty list subclass there as true (run 30: the tiny GLM's
CUDA decode graph stopped taking the flash-decode kernel). This module does not import Triton.
"""

from __future__ import annotations

import logging
import os
from importlib.util import find_spec

logger = logging.getLogger(__name__)

TRITON_AVAILABLE = find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's own switch: kernels run on CPU tensors (tests)


def give_up(reasons: list[str], error: Exception, *, kernel: str, instead: str) -> None:
    """Give a kernel family up for good: ``error`` into its ``reasons``; the first is logged."""
    reasons.append(f"{type(error).__name__}: {error}")
    if len(reasons) == 1:
        logger.warning("the Triton %s failed, %s: %s", kernel, instead, reasons[0])
