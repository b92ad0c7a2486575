"""Which rows of a knowledge base's Milvus collection belong to a version, as Milvus filters.

Chunk ids grow and are never reused, so a published version V's vectors are exactly
``chunk_id < V.next_chunk_id`` minus the id ranges V removed ("retired"): ``live_filter``
selects them for every search and count, ``stale_filter`` the rows no reader of V (or of the
version before it) can need, which the next build deletes. ``retired_ranges`` keeps the
removed ids as few ``[start, end)`` ranges so the filters stay short.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

PRIMARY_FIELD = "chunk_id"


def live_filter(below: int, retired: Sequence[Sequence[int]]) -> str:
    """The Milvus filter selecting one version's rows."""
    parts = [f"{PRIMARY_FIELD} < {int(below)}"]
    parts += [f"not ({PRIMARY_FIELD} >= {int(a)} and {PRIMARY_FIELD} < {int(b)})" for a, b in retired]
    return " and ".join(parts)


def stale_filter(below: int, retired: Sequence[Sequence[int]]) -> str:
    """The rows no reader of a version (or of the one before it) can need."""
    parts = [f"{PRIMARY_FIELD} >= {int(below)}"]
    parts += [f"({PRIMARY_FIELD} >= {int(a)} and {PRIMARY_FIELD} < {int(b)})" for a, b in retired]
    return " or ".join(parts)


def retired_ranges(removed_ids: Sequence[int], live_ids: np.ndarray) -> list[list[int]]:
    """Removed chunk ids as few ``[start, end)`` ranges.

    Runs of consecutive ids become one range, and neighbouring ranges merge when no chunk of
    the new version lies between them (ids in such gaps were removed by earlier builds).
    """
    ids = np.unique(np.asarray(removed_ids, dtype=np.int64))
    if len(ids) == 0:
        return []
    cuts = np.nonzero(np.diff(ids) != 1)[0]
    starts = np.concatenate([ids[:1], ids[cuts + 1]])
    ends = np.concatenate([ids[cuts], ids[-1:]]) + 1
    live = np.asarray(live_ids, dtype=np.int64)
    merged = [[int(starts[0]), int(ends[0])]]
    for start, end in zip(starts[1:], ends[1:], strict=True):
        live_between = np.searchsorted(live, start) - np.searchsorted(live, merged[-1][1])
        if live_between == 0:
            merged[-1][1] = int(end)
        else:
            merged.append([int(start), int(end)])
    return merged


__all__ = ["PRIMARY_FIELD", "live_filter", "retired_ranges", "stale_filter"]
