"""Whether glmkb's Triton kernels can run here, and each kernel family given up at its first failure.

Every op module (``llm.kernels.*_op``, ``llm.fast_decode.prompt_steps``) runs its kernel where it
applies and the PyTorch it replaces otherwise. A kernel that fails to compile or launch (a Triton
too old, a GPU it cannot compile for) must neither take a decode step down nor warn at every step:
each family holds one ``GiveUp``, which records the first failure, says once what runs instead,
and keeps the family off for the rest of the process. This module does not import Triton.
"""

from __future__ import annotations

import logging
import os
from importlib.util import find_spec

logger = logging.getLogger(__name__)

TRITON_AVAILABLE = find_spec("triton") is not None
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # Triton's own switch: kernels run on CPU tensors (tests)


class GiveUp(list[str]):
    """Why a kernel family was given up: empty (false) while it is still on."""

    def __init__(self, kernel: str, *, instead: str) -> None:
        super().__init__()
        self.kernel, self.instead = kernel, instead

    def record(self, error: Exception) -> None:
        """Give the family up for good; the first failure is logged, naming what runs instead."""
        self.append(f"{type(error).__name__}: {error}")
        if len(self) == 1:
            logger.warning("the Triton %s failed, %s: %s", self.kernel, self.instead, self[0])
