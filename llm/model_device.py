"""Moving a call's prompt tensors to the model's device, on the model's worker."""

from __future__ import annotations

from typing import Any

import torch


def on_model_device(model: Any, generate_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``generate_kwargs`` with its tensors (the prompt ids and mask) on the model's device, moved here on
    the model's worker. Request threads build them on the CPU (``llm.generate_kwargs``): in PyTorch's
    default (global) capture mode a copy to the GPU (or a read back) from a request thread while the
    worker captured a new shape invalidated the capture and failed that request ("operation not
    permitted when stream is capturing", run 31h, a request arriving during a yield's new batch).
    ``capture_graph`` now captures thread-locally as well; the prompt's copy still belongs here.
    The decode graph copies its prompt itself (``llm.fast_decode.prefill``: one copy with the prompt
    pass's other inputs), so only the paths through ``generate`` call this."""
    device = getattr(model, "device", None)
    if device is None:
        return generate_kwargs
    moved = {k: v.to(device) for k, v in generate_kwargs.items() if isinstance(v, torch.Tensor) and v.device != device}
    return {**generate_kwargs, **moved} if moved else generate_kwargs
