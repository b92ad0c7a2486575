"""The one device rule of both models (the chat model, ``llm.loading``; embeddings, ``kb.embedding``).

``auto`` means a CUDA GPU if torch sees one, then Apple silicon's GPU (MPS), else the CPU. torch
is imported on first call, so importing this module stays free.
"""

from __future__ import annotations

__all__ = ["auto_device", "mps_available"]


def mps_available() -> bool:
    """Whether torch can run on Apple silicon's GPU here (a macOS build on an M-series Mac)."""
    import torch

    backend = getattr(torch.backends, "mps", None)
    return backend is not None and backend.is_available()


def auto_device() -> str:
    """``cuda``, ``mps`` or ``cpu``: the first of them this machine has."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "mps" if mps_available() else "cpu"
