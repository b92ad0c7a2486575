"""Dense and hybrid retrieval with a tiny real sentence-transformers model; model mismatch; reranker."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
from langchain_core.retrievers import BaseRetriever

from kb import EmbeddingModelError, KnowledgeBase, KnowledgeBaseError, KnowledgeBaseRetriever, reciprocal_rank_fusion
from kb import storage


@pytest.fixture()
def dense_kb(tmp_path: Path, tiny_embedding_path: Path, sanguo_excerpts: dict[str, Path]) -> KnowledgeBase:
    kb = KnowledgeBase(
        tmp_path / "root", "dense", create=True, embedding_model=str(tiny_embedding_path),
        chunk_size=200, chunk_overlap=40, device="cpu", batch_size=16,
    )
    kb.add_files([sanguo_excerpts["a"], sanguo_excerpts["b"]])
    return kb


def test_dense_kb_records_model_and_dimension(dense_kb: KnowledgeBase, tiny_embedding_path: Path) -> None:
    assert dense_kb.embedding_model == str(tiny_embedding_path.resolve())
    assert dense_kb.dimension == 32 and not dense_kb.keyword_only
    version_dir = dense_kb.path / dense_kb.version
    assert set(dense_kb.manifest["files"]) >= {"index.faiss", "docstore.sqlite", "bm25/vocab.index.json"}
    assert (version_dir / "index.faiss").stat().st_size > 32 * 4 * dense_kb.manifest["counts"]["chunks"]


def test_dense_hits_are_the_true_nearest_chunks(dense_kb: KnowledgeBase, tiny_embedding_path: Path) -> None:
    """Scores and order equal a brute-force cosine over every chunk, computed independently."""
    from langchain_huggingface import HuggingFaceEmbeddings

    embeddings = HuggingFaceEmbeddings(
        model_name=str(tiny_embedding_path), model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True}
    )
    chunks = dense_kb.get_chunks("sanguo_a.txt") + dense_kb.get_chunks("sanguo_b.txt")
    matrix = np.asarray(embeddings.embed_documents([c.page_content for c in chunks]))
    query = "董卓欲废少帝，丁原不从"
    expected = np.sort(matrix @ np.asarray(embeddings.embed_query(query)))[::-1][:6]
    hits = dense_kb.search(query, mode="dense", k=6)
    assert [h.metadata["score"] for h in hits] == pytest.approx(list(expected), abs=1e-5)
    target = chunks[7]
    top = dense_kb.search(target.page_content, mode="dense", k=1)[0]
    assert top.metadata["score"] == pytest.approx(1.0, abs=1e-5)


def test_hybrid_fuses_dense_and_bm25_rankings(dense_kb: KnowledgeBase) -> None:
    query = "吕布杀丁原投董卓"
    dense = [h.metadata["chunk_id"] for h in dense_kb.search(query, mode="dense", k=50)]
    sparse = [h.metadata["chunk_id"] for h in dense_kb.search(query, mode="bm25", k=50)]
    hybrid = dense_kb.search(query, mode="hybrid", k=8)
    expected = reciprocal_rank_fusion([dense, sparse])[:8]
    assert [(h.metadata["chunk_id"], h.metadata["score"]) for h in hybrid] == [
        (i, pytest.approx(s)) for i, s in expected
    ]
    assert all("dense_score" in h.metadata for h in hybrid)


def test_retriever_is_a_langchain_retriever(dense_kb: KnowledgeBase) -> None:
    retriever = dense_kb.as_retriever(mode="hybrid", k=3)
    assert isinstance(retriever, BaseRetriever) and isinstance(retriever, KnowledgeBaseRetriever)
    docs = retriever.invoke("董卓废立少帝")
    assert len(docs) == 3
    assert all(d.metadata["source"].endswith(("sanguo_a.txt", "sanguo_b.txt")) for d in docs)


def test_other_embedding_model_is_refused(
    dense_kb: KnowledgeBase, other_embedding_path: Path, sanguo_excerpts: dict[str, Path]
) -> None:
    with pytest.raises(EmbeddingModelError, match="was built with embedding model"):
        KnowledgeBase(dense_kb.root, "dense", embedding_model=str(other_embedding_path))
    with pytest.raises(EmbeddingModelError, match="was built with embedding model"):
        KnowledgeBase(dense_kb.root, "dense", embedding_model="none")
    same = KnowledgeBase(dense_kb.root, "dense", embedding_model=dense_kb.embedding_model, device="cpu")
    assert same.search("吕布", mode="dense", k=1)


def test_changed_file_updates_the_vector_index(
    dense_kb: KnowledgeBase, sanguo_excerpts: dict[str, Path], tmp_path: Path
) -> None:
    dense_kb.remove(["sanguo_a.txt"])
    dense_kb.add_files([sanguo_excerpts["c"]])
    version = dense_kb._live.version
    assert version is not None and version.faiss_index.ntotal == dense_kb.manifest["counts"]["chunks"]
    target = dense_kb.get_chunks("sanguo_c.txt")[2]
    best = [h.metadata["chunk_id"] for h in dense_kb.search(target.page_content, mode="dense", k=5)
            if h.metadata["score"] > 1 - 1e-5]
    assert target.metadata["chunk_id"] in best, "new chunks are searchable by their vectors"
    sources = {Path(d.metadata["source"]).name for d in dense_kb.search("玄德", mode="dense", k=50)}
    assert sources == {"sanguo_b.txt", "sanguo_c.txt"}


def test_missing_hub_model_fails_fast_with_the_fix(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = KnowledgeBase(tmp_path, "x", create=True, embedding_model="nobody-here/no-such-model", device="cpu")
    started = time.monotonic()
    with pytest.raises(EmbeddingModelError) as info:
        kb.add_files([sanguo_excerpts["a"]])
    assert time.monotonic() - started < 10, "must not retry downloads"
    message = str(info.value)
    assert "nobody-here/no-such-model" in message and "--embedding none" in message and "local folder" in message
    assert not (tmp_path / "x").exists() or KnowledgeBase.list_names(tmp_path) == []


def test_missing_local_model_folder(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = KnowledgeBase(tmp_path, "x", create=True, embedding_model=str(tmp_path / "models" / "gone"), device="cpu")
    with pytest.raises(EmbeddingModelError, match="not found"):
        kb.add_files([sanguo_excerpts["a"]])


@pytest.mark.parametrize("rehash", [False, True])
def test_pickle_payload_as_faiss_index_never_runs(dense_kb: KnowledgeBase, tmp_path: Path, rehash: bool) -> None:
    marker = tmp_path / "PWNED"

    class Payload:
        def __reduce__(self) -> tuple:
            return (Path.touch, (marker,))

    version_dir = dense_kb.path / dense_kb.version
    (version_dir / "index.faiss").write_bytes(pickle.dumps(Payload()))
    if rehash:
        manifest = json.loads((version_dir / storage.MANIFEST).read_text(encoding="utf-8"))
        manifest["files"] = storage.hash_files(version_dir)
        storage.write_manifest(version_dir, manifest)
    with pytest.raises(KnowledgeBaseError, match="rebuild"):
        KnowledgeBase(dense_kb.root, "dense")
    assert not marker.exists()


def test_reranker_reorders_hits(dense_kb: KnowledgeBase, tiny_reranker_path: Path) -> None:
    reranking = KnowledgeBase(dense_kb.root, "dense", device="cpu", reranker=str(tiny_reranker_path))
    hits = reranking.search("吕布 赤兔马", mode="hybrid", k=5)
    assert len(hits) == 5
    scores = [h.metadata["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert all("retrieval_score" in h.metadata for h in hits)
    from sentence_transformers import CrossEncoder

    expected = CrossEncoder(str(tiny_reranker_path), device="cpu").predict([("吕布 赤兔马", hits[0].page_content)])
    assert scores[0] == pytest.approx(float(expected[0]), abs=1e-5)
    plain = reranking.search("吕布 赤兔马", mode="hybrid", k=5, rerank=False)
    assert all("retrieval_score" not in h.metadata for h in plain)
