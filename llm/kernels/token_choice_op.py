"""``greedy_choice`` / ``sampled_choice``: a decode step's token choice through
``llm.kernels.token_choice`` (greedy) and ``llm.kernels.token_top_k`` / ``token_sampling`` (sampled)
where they apply.

Not a custom op: the choice runs eagerly after the compiled forward (captured into the decode
graph with it), never under ``torch.compile``. A kernel that fails to compile or launch is given
up for good with one warning; the caller then takes ``sampling.choose_tokens``, the reference.
"""

from importlib import import_module
from typing import Any

import torch

from llm.kernels.give_up import INTERPRET, TRITON_AVAILABLE, give_up

MAX_TOP_K = 128  # llm.kernels.token_top_k's limit (that module imports Triton: not imported here)

_broken: list[str] = []  # why the kernel was given up (llm.kernels.give_up)


def token_kernels_apply(logits: torch.Tensor, eos: torch.Tensor) -> bool:
    """Whether ``greedy_choice`` and ``sampled_choice`` can run: float32 ``(B, V)`` logits with unit
    last stride on CUDA (on CPU under Triton's interpreter), a power-of-two count of eos ids, and the
    kernels not given up."""
    if not TRITON_AVAILABLE or _broken or logits.dim() != 2 or logits.dtype != torch.float32:
        return False
    if logits.stride(-1) != 1 or eos.numel() & (eos.numel() - 1):
        return False
    return logits.device.type == "cuda" or (INTERPRET and logits.device.type == "cpu")


def greedy_choice(
    logits: torch.Tensor, token: torch.Tensor, eos: torch.Tensor, allow_eos: torch.Tensor, *,
    seen: torch.Tensor | None, penalty: torch.Tensor, cur: torch.Tensor | None,
) -> bool:
    """Each row's greedy token into ``token`` (``seen`` marked, ``cur`` moved on by one where given),
    as ``launch_greedy_choice`` says; False (nothing written) where the kernel failed."""
    return _launched("token_choice", "launch_greedy_choice", logits, token, eos, allow_eos, seen=seen, penalty=penalty,
                     cur=cur)


def sampled_choice(
    logits: torch.Tensor, noise: torch.Tensor, token: torch.Tensor, eos: torch.Tensor, allow_eos: torch.Tensor, *,
    seen: torch.Tensor | None, penalty: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
    top_k: int | None, cur: torch.Tensor | None,
) -> bool:
    """Each row's sampled token (temperature, top-k, top-p) into ``token``, racing ``noise``, as
    ``token_sampling.launch_sampled_choice`` says: through ``token_top_k`` where top-k is at most
    ``MAX_TOP_K`` (generate's default 50 included), else ``token_sampling``'s radix selects on one
    row. False (nothing written) where the kernel failed, or for a larger top-k or none past one
    row, where PyTorch's sort is faster (run 30, H100, 16 rows, top_p 0.8 alone: 448.5 against
    373.2 us; one row: 103.3 against 151.1)."""
    if top_k and top_k <= MAX_TOP_K:
        return _launched("token_top_k", "launch_top_k_choice", logits, noise, token, eos, allow_eos, seen=seen,
                         penalty=penalty, temperature=temperature, top_p=top_p, top_k=top_k, cur=cur)
    if logits.shape[0] > 1:
        return False
    return _launched("token_sampling", "launch_sampled_choice", logits, noise, token, eos, allow_eos, seen=seen,
                     penalty=penalty, temperature=temperature, top_p=top_p, top_k=top_k, cur=cur)


def _launched(module: str, launch: str, *args: Any, **kwargs: Any) -> bool:
    """``llm.kernels.<module>.<launch>(*args, **kwargs)`` (imported here: it imports Triton); False,
    and the kernels given up for good with one warning, where that fails (a Triton too old, a GPU it
    cannot compile for): PyTorch from then on."""
    try:
        getattr(import_module(f"llm.kernels.{module}"), launch)(*args, **kwargs)
        return True
    except Exception as e:
        give_up(_broken, e, kernel="token choice", instead="using PyTorch")
        return False
