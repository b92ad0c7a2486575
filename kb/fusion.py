"""Reciprocal rank fusion: merge ranked lists without comparing their (incomparable) scores."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
RRF_K = 60  # the constant from Cormack et al. (2009); damps the weight of the very top ranks


def reciprocal_rank_fusion(rankings: Sequence[Sequence[K]], *, k: int = RRF_K) -> list[tuple[K, float]]:
    """``[(item, score), ...]`` best first, where score = sum over lists of ``1 / (k + rank)``
    (rank starting at 1). Ties go to the item with the better single rank, then to the
    earlier list."""
    scores: dict[K, float] = {}
    best: dict[K, tuple[int, int]] = {}
    for list_index, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best[item] = min(best.get(item, (rank, list_index)), (rank, list_index))
    return sorted(scores.items(), key=lambda kv: (-kv[1], best[kv[0]]))
