"""Dense vectors in a FAISS file inside each version folder (the default store).

``IndexIDMap2(IndexFlatIP)`` keyed by chunk id: exact search, and with normalized
embeddings the inner product is the cosine similarity. The file is written with
``faiss.write_index`` (never pickle) and hashed into the manifest like every other file.
"""

from __future__ import annotations

import errno

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from kb.dense_store import DenseIndex, DenseStore, VectorChange
from kb.errors import KnowledgeBaseError

FAISS_FILE = "index.faiss"


class FaissIndex(DenseIndex):
    """A loaded FAISS index; ``index`` is the ``faiss.IndexIDMap2`` itself."""

    def __init__(self, index: Any) -> None:
        self.index = index
        self.dimension = int(index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, vector: np.ndarray, k: int) -> list[tuple[int, float]]:
        if self.index.ntotal == 0 or k <= 0:
            return []
        query = np.ascontiguousarray(vector.reshape(1, -1), dtype=np.float32)
        scores, ids = self.index.search(query, min(k, self.index.ntotal))
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]


class FaissStore(DenseStore):
    """Vectors of knowledge base ``kb_name`` as ``index.faiss`` in every version folder."""

    kind = "faiss"

    def __init__(self, kb_name: str) -> None:
        self.kb_name = kb_name

    def open_index(self, version_dir: Path, manifest: dict[str, Any], *, chunk_count: int) -> FaissIndex | None:
        path = version_dir / FAISS_FILE
        if not path.exists():
            return None
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as e:
            raise KnowledgeBaseError(
                f"FAISS index of {self.kb_name!r} is unreadable; rebuild the knowledge base"
            ) from e
        if index.ntotal != chunk_count:
            raise KnowledgeBaseError(
                f"FAISS index of {self.kb_name!r} does not match its docstore; rebuild the knowledge base"
            )
        return FaissIndex(index)

    def write_version(self, change: VectorChange) -> dict[str, Any]:
        """Clone the base index, drop removed chunks, add new ones, write it into the staging folder."""
        base = change.base
        if isinstance(base, FaissIndex):
            index = faiss.clone_index(base.index)
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(change.dimension))
        if change.removed_ids:
            index.remove_ids(np.asarray(change.removed_ids, dtype=np.int64))
        if change.new_ids:
            index.add_with_ids(
                np.ascontiguousarray(change.vectors, dtype=np.float32), np.asarray(change.new_ids, dtype=np.int64)
            )
        path = change.staging / FAISS_FILE
        try:
            faiss.write_index(index, str(path))
        except RuntimeError as e:  # faiss reports a short write (a full disk) as a RuntimeError
            raise OSError(errno.EIO, f"cannot write {path}: {' '.join(str(e).split())}") from e
        return {"store": self.kind, "file": FAISS_FILE}

    def describe(self) -> str:
        return f"FAISS ({FAISS_FILE} in each version folder)"


__all__ = ["FAISS_FILE", "FaissIndex", "FaissStore"]
