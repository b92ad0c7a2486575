"""Dense vectors in a FAISS file inside each version folder (the default store).

Up to ``FLAT_LIMIT`` vectors: ``IndexIDMap2(IndexFlatIP)`` keyed by chunk id, exact search.
Above it the index becomes an ``IndexIVFFlat`` (inner product, ids kept), searched with
``NPROBE`` lists: flat search at 1M x 1024 takes ~600 ms a query on 2 cores, IVF ~5 ms at
recall@10 >= 0.95 on book-like vectors (docs/PERFORMANCE.md). With normalized embeddings
the inner product is the cosine similarity either way. The file is written with
``faiss.write_index`` (never pickle) and hashed into the manifest like every other file.
"""

from __future__ import annotations

import errno
import logging
import math
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from kb.dense_store import DenseIndex, DenseStore, VectorChange
from kb.manifest import damaged

FAISS_FILE = "index.faiss"
FLAT_LIMIT = 200_000
"""Above this many vectors a knowledge base switches from exact to IVF search."""
NPROBE = 32
"""IVF lists searched per query (recall/speed trade-off, recorded in the manifest)."""
TRAIN_PER_LIST = 50
log = logging.getLogger(__name__)


def ivf_list_count(n: int) -> int:
    """Number of IVF lists for ``n`` vectors: the power of two nearest to 2*sqrt(n)."""
    return 1 << round(math.log2(2 * math.sqrt(n)))


def flat_contents(index: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(vectors, ids)`` of an ``IndexIDMap2(IndexFlatIP)``."""
    flat = faiss.downcast_index(index.index)
    vectors = faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d).copy()
    return vectors, faiss.vector_to_array(index.id_map).astype(np.int64)


def build_ivf(vectors: np.ndarray, ids: np.ndarray, *, seed: int = 0) -> Any:
    """An ``IndexIVFFlat`` (inner product) over ``vectors`` keyed by ``ids``, trained on a sample."""
    n, dim = vectors.shape
    nlist = ivf_list_count(n)
    index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
    sample = min(n, TRAIN_PER_LIST * nlist)
    rows = np.random.default_rng(seed).choice(n, size=sample, replace=False) if sample < n else slice(None)
    log.info("training an IVF index with %d lists on %d of %d vectors", nlist, sample, n)
    index.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
    index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
    index.nprobe = NPROBE
    return index


def index_kind(index: Any) -> str:
    return "ivf_flat" if isinstance(index, faiss.IndexIVF) else "flat"


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
            raise damaged(self.kb_name, f"its FAISS index {path} is unreadable") from e
        if index.ntotal != chunk_count:
            raise damaged(self.kb_name, f"its FAISS index {path} does not match its docstore")
        if isinstance(index, faiss.IndexIVF):  # read_index returns the concrete class
            index.nprobe = int((manifest.get("vectors") or {}).get("nprobe", NPROBE))
        return FaissIndex(index)

    def write_version(self, change: VectorChange) -> dict[str, Any]:
        """Clone the base index, drop removed chunks, add new ones, write it into the staging folder."""
        base = change.base
        if isinstance(base, FaissIndex):
            index = faiss.clone_index(base.index)
            if isinstance(index, faiss.IndexIVF):
                index.nprobe = base.index.nprobe
        else:
            index = faiss.IndexIDMap2(faiss.IndexFlatIP(change.dimension))
        if change.removed_ids:
            index.remove_ids(np.asarray(change.removed_ids, dtype=np.int64))
        if change.new_ids:
            index.add_with_ids(
                np.ascontiguousarray(change.vectors, dtype=np.float32), np.asarray(change.new_ids, dtype=np.int64)
            )
        if index_kind(index) == "flat" and index.ntotal > FLAT_LIMIT:
            # IVF lists keep their centroids from here on; added vectors go to the nearest list.
            index = build_ivf(*flat_contents(index))
        path = change.staging / FAISS_FILE
        try:
            faiss.write_index(index, str(path))
        except RuntimeError as e:  # faiss reports a short write (a full disk) as a RuntimeError
            raise OSError(errno.EIO, f"cannot write {path}: {' '.join(str(e).split())}") from e
        section: dict[str, Any] = {"store": self.kind, "file": FAISS_FILE, "index": index_kind(index)}
        if section["index"] == "ivf_flat":
            section.update(nlist=int(index.nlist), nprobe=int(index.nprobe))
        return section

    def describe(self) -> str:
        return f"FAISS ({FAISS_FILE} in each version folder)"


__all__ = ["FAISS_FILE", "FLAT_LIMIT", "NPROBE", "FaissIndex", "FaissStore", "build_ivf", "ivf_list_count"]
