"""The rotary embedding's ``cos``/``sin`` over every cache position, made once per decode graph.

A decode step's forward computed them afresh for its one position (transformers' rotary module:
angles, ``cat``, ``cos``, ``sin``, the scaling and the cast; with transformers 5.17-5.23 the
angles as a float32 matmul): eight or nine kernels of every ChatGLM3-6B step, ~13.7 us on the
H200 (run 21's step profile). With the tables, ``AttentionStep`` hands the rotary + cache-write
kernel the token's position instead and it reads its row; the model's own rotary output is then
unused and ``torch.compile`` drops it. The tables are the rotary module's own output for positions
``0 .. P - 1`` (the values the module would give each step), so nothing else changes.

Only for rotary types that depend on the position alone: "dynamic" and "longrope" scaling recompute
their frequencies from the sequence length, so their steps keep the module's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class RotaryTable:
    """``cos``/``sin`` ``(P, R)`` in the model's dtype: row ``p`` is the rotary of position ``p``."""

    cos: torch.Tensor
    sin: torch.Tensor


def rotary_table(model: Any, positions: int) -> RotaryTable | None:
    """The tables of ``model``'s rotary module for ``positions`` positions, or None where it has
    none this applies to (no ``rotary_emb`` on its decoder, a length-dependent rotary type)."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    rotary = getattr(decoder, "rotary_emb", None)
    kind = str(getattr(rotary, "rope_type", "default"))
    if rotary is None or "dynamic" in kind or kind == "longrope":
        return None
    weight = model.get_input_embeddings().weight
    probe = torch.empty(0, dtype=weight.dtype, device=weight.device)  # the rotary module reads its dtype and device
    with torch.no_grad():
        cos, sin = rotary(probe, torch.arange(positions, device=weight.device)[None])
    return RotaryTable(cos=cos[0].contiguous(), sin=sin[0].contiguous())
