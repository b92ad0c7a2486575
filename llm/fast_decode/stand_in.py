"""A stand-in for one module's ``forward`` while the fast path runs it: the swap, in one place.

``swap(on=True)`` sets ``forward`` as an instance attribute, which shadows the class's own;
``swap(on=False)`` removes it. ``attention.swapped`` swaps a list of them for a block.
"""

from __future__ import annotations

from typing import Any

import torch


class StandIn:
    """Base of ``attention_step.AttentionStep`` and ``prompt_steps``' norm and SwiGLU steps."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def swap(self, *, on: bool) -> None:
        """Put this forward on the module (``on``) or take it off again."""
        if on:
            self.module.forward = self.forward
        else:
            self.module.__dict__.pop("forward", None)
