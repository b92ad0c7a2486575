"""Large knowledge bases switch from exact FAISS search to an IVF index, keeping updates exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kb import faiss_store
from kb.dense_store import VectorChange
from kb.faiss_store import FaissStore


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def book_like(n: int, dim: int, seed: int) -> np.ndarray:
    """Vectors in passage groups (10 per group), like neighbouring chunks of a book."""
    rng = np.random.default_rng(seed)
    groups = unit(rng.standard_normal((max(1, n // 10), dim)))
    return unit(groups[np.arange(n) // 10 % len(groups)] + 0.6 * unit(rng.standard_normal((n, dim))) / np.sqrt(1))


def write(store: FaissStore, folder: Path, base, *, new_ids, vectors, removed=(), dim) -> dict:
    folder.mkdir()
    change = VectorChange(
        base=base, staging=folder, removed_ids=list(removed), new_ids=list(new_ids), vectors=vectors,
        dimension=dim, next_chunk_id=0, live_ids=np.array([]),
    )
    return store.write_version(change)


def test_switch_to_ivf_above_the_limit_and_stay_correct(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(faiss_store, "FLAT_LIMIT", 2000)
    monkeypatch.setattr(faiss_store, "TRAIN_PER_LIST", 20)
    dim, store = 32, FaissStore("big")
    first = book_like(1500, dim, 1)
    section = write(store, tmp_path / "v1", None, new_ids=range(1500), vectors=first, dim=dim)
    assert section["index"] == "flat"
    v1 = store.open_index(tmp_path / "v1", {"vectors": section}, chunk_count=1500)

    more = book_like(1500, dim, 2)
    section = write(store, tmp_path / "v2", v1, new_ids=range(1500, 3000), vectors=more, dim=dim)
    assert section["index"] == "ivf_flat" and section["nlist"] == faiss_store.ivf_list_count(3000)
    v2 = store.open_index(tmp_path / "v2", {"vectors": section}, chunk_count=3000)
    assert len(v2) == 3000 and v2.index.nprobe == faiss_store.NPROBE

    everything = np.concatenate([first, more])
    queries = unit(everything[::97] + 0.05)
    recall = []
    for q in queries:
        exact = set(np.argsort(-everything @ q)[:10].tolist())
        recall.append(len(exact & {i for i, _ in v2.search(q, 10)}) / 10)
    assert np.mean(recall) >= 0.95

    # Incremental updates on the IVF index: removed ids vanish, new ids are found.
    removed = list(range(0, 3000, 3))
    extra = book_like(10, dim, 3)
    section = write(store, tmp_path / "v3", v2, new_ids=range(3000, 3010), vectors=extra, removed=removed, dim=dim)
    v3 = store.open_index(tmp_path / "v3", {"vectors": section}, chunk_count=3000 - len(removed) + 10)
    hits = {i for q in everything[removed[:50]] for i, _ in v3.search(q, 5)}
    assert not hits & set(removed)
    assert v3.search(extra[4], 1)[0][0] == 3004
    assert len(v2) == 3000  # the published version is untouched by the next build
