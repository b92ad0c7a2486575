"""``first_argmax``, the decode graph's two-stage argmax, against ``torch.argmax`` itself."""

from __future__ import annotations

import pytest
import torch

from llm.fast_decode.sampling import first_argmax


def hard_rows(vocab: int) -> torch.Tensor:
    """Random rows, rows of ties (the first index wins), -inf everywhere but one place, all -inf,
    NaN (which argmax counts as the maximum), and many equal maxima in different chunks."""
    g = torch.Generator().manual_seed(vocab)
    rows = [torch.randn(vocab, generator=g) for _ in range(3)]
    ties = torch.zeros(vocab)
    ties[vocab // 2 :] = 1.0
    lone = torch.full((vocab,), -torch.inf)
    lone[vocab - 1] = 0.0
    nan = torch.randn(vocab, generator=g)
    nan[vocab // 3] = torch.nan
    rounded = (torch.randn(vocab, generator=g) * 2).round()  # many equal maxima in different chunks
    return torch.stack([*rows, ties, lone, torch.full((vocab,), -torch.inf), nan, rounded])


@pytest.mark.parametrize("vocab", [1, 7, 512, 513, 65024, 151552])
def test_first_argmax_is_torch_argmax(vocab: int) -> None:
    """``hard_rows``, with a vocabulary that does and does not fill the last chunk."""
    scores = hard_rows(vocab)
    assert torch.equal(first_argmax(scores), scores.argmax(dim=-1))
    assert torch.equal(first_argmax(scores, chunk=3), scores.argmax(dim=-1))
