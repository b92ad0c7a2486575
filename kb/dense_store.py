"""Where a knowledge base keeps its dense vectors: the small interface behind FAISS and Milvus.

The docstore, the BM25 index and the manifest always live in a version folder under
``kb_root`` (see ``kb/storage.py``). Only the vectors, keyed by chunk id, are delegated to a
:class:`DenseStore`: FAISS index files inside the version folder (:mod:`kb.faiss_store`) or a
Milvus collection (:mod:`kb.milvus_store`). A store writes a new version's vectors *before* the
manifest is published and never disturbs what readers of the current version see; a
:class:`DenseIndex` is one published version's vectors as a search reads them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

STORES: tuple[str, ...] = ("faiss", "milvus")
DEFAULT_STORE = "faiss"


class DenseIndex(ABC):
    """The vectors of one published version; ``search`` scores are cosine similarities."""

    dimension: int

    @abstractmethod
    def __len__(self) -> int:
        """How many chunks have a vector in this version."""

    @abstractmethod
    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        """The ``k`` nearest ``(chunk_id, score)`` pairs to a normalized query ``vector``, best first."""

    def check(self) -> None:
        """Raise now if searching would fail (e.g. Milvus unreachable), before a query is embedded."""


@dataclass
class VectorChange:
    """What one build does to the vectors: the base version, removed and added chunks."""

    base: DenseIndex | None
    """The current version's vectors (None for the first build)."""
    staging: Path
    """The new version's folder, not yet published (files written here are hashed into the manifest)."""
    removed_ids: Sequence[int]
    new_ids: Sequence[int]
    vectors: np.ndarray
    """Normalized float32 vectors of ``new_ids``, row for row."""
    dimension: int
    next_chunk_id: int
    """Chunk ids of the new version are all below this; ids are never reused."""
    live_ids: np.ndarray
    """Every chunk id of the new version, ascending."""
    show_progress: bool = False


class DenseStore(ABC):
    """Where one knowledge base keeps its vectors. Subclasses say how; the knowledge base says when."""

    kind: ClassVar[str]

    @abstractmethod
    def open_index(self, version_dir: Path, manifest: dict[str, Any], *, chunk_count: int) -> DenseIndex | None:
        """The vectors of the published version in ``version_dir`` (cheap: may connect lazily).

        ``chunk_count`` is the number of chunks in the version's docstore; an index that
        does not hold exactly that many vectors is refused with "rebuild".
        """

    @abstractmethod
    def write_version(self, change: VectorChange) -> dict[str, Any]:
        """Make the new version's vectors durable without changing what readers of
        ``change.base`` see, and return the manifest's ``vectors`` section."""

    def check_writable(self) -> None:
        """Fail before a build's slow steps if the vectors could not be written (e.g. no server)."""

    def drop(self) -> None:
        """Delete every vector this knowledge base stored outside its folder (nothing for FAISS)."""

    def close(self) -> None:
        """Release connections (the store can still reconnect if used again)."""

    def describe(self) -> str:
        """Where the vectors are, for messages."""
        return self.kind


def store_kind(manifest: dict[str, Any]) -> str:
    """The store a manifest's vectors are in (manifests from before stores existed are FAISS)."""
    return str(manifest.get("vectors", {}).get("store", DEFAULT_STORE))


__all__ = ["DEFAULT_STORE", "STORES", "DenseIndex", "DenseStore", "VectorChange", "store_kind"]
