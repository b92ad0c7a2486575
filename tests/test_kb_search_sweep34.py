"""Searching a knowledge base the way users query it (sweep 34). Each test names the bug it guards against.

Fast: keyword-only knowledge bases and hand-made BM25 indexes; no model weights, no network.
"""

from __future__ import annotations

import asyncio

import pytest

from kb import KnowledgeBase
from kb.bm25_index import BM25Index
from kb.errors import KnowledgeBaseError
from kb.search import Query, nearest_settled
from kb.tokenizing import tokenize

TEXT = "".join(
    f"第{i}回 刘备第{i}次访贤\n刘备与关羽议事，第{i}段。" + "闲话。" * (10 + i) + "\n"
    for i in range(1, 7)
)


@pytest.fixture(scope="module")
def twin_kb(tmp_path_factory: pytest.TempPathFactory) -> KnowledgeBase:
    """A keyword-only knowledge base holding the same text under two names: every chunk has an exact twin."""
    root = tmp_path_factory.mktemp("sweep34")
    kb = KnowledgeBase(root, "twins", create=True, embedding_model="none", chunk_size=60, chunk_overlap=0)
    kb.add_texts({"one.txt": TEXT, "two.txt": TEXT})
    return kb


def ids(docs: list) -> list[int]:
    return [d.metadata["chunk_id"] for d in docs]


def test_bm25_cut_keeps_the_earlier_of_tied_chunks() -> None:
    """Bug: BM25Index.search cut with argpartition, which keeps an arbitrary member of a tie at the k-th
    place: with two copies of a chunk, k=1 returned the second copy while k=2 ranked the first copy first."""
    chunk = ["刘备", "关羽", "刘", "备"]
    tokens = [["闲话"], chunk, ["曹操"], chunk, ["张飞", "刘备"], chunk]
    index = BM25Index.build(tokens, ids=[10, 11, 12, 13, 14, 15])
    full = index.search(["刘备"], 6)
    assert [i for i, _ in full] == [14, 11, 13, 15]
    for k in range(1, 6):
        assert index.search(["刘备"], k) == full[:k]


def test_bm25_and_hybrid_agree_on_a_keyword_only_kb(twin_kb: KnowledgeBase) -> None:
    """Bug: a keyword-only KB answers hybrid with BM25 at depth 50 and bm25 at depth k; the arbitrary cut
    in a tie made `--mode bm25 -k 1` and `--mode hybrid -k 1` return different copies of the same passage."""
    for question in ("刘备访贤", "关羽议事", "第3段"):
        full = ids(twin_kb.search(question, mode="bm25", k=12))
        for k in (1, 2, 3, 5):
            assert ids(twin_kb.search(question, mode="bm25", k=k)) == full[:k]
            assert ids(twin_kb.search(question, mode="hybrid", k=k)) == full[:k]


def test_dense_cut_settles_ties_in_chunk_id_order() -> None:
    """Bug: dense hits came in the vector index's order: ties (two copies of a text) listed the later chunk
    first and the cut kept an arbitrary member, so k=1 and k=3 disagreed on which copy was best."""
    scored = {1: 0.5, 2: 0.9, 3: 0.9, 4: 0.9, 5: 0.7, 6: 0.9}

    def index_search(n: int) -> list[tuple[int, float]]:  # ties in descending id, like FAISS's heap
        return sorted(scored.items(), key=lambda kv: (-kv[1], -kv[0]))[:n]

    full = nearest_settled(index_search, 6, 6)
    assert full == [(2, 0.9), (3, 0.9), (4, 0.9), (6, 0.9), (5, 0.7), (1, 0.5)]
    for depth in range(1, 6):
        assert nearest_settled(index_search, depth, 6) == full[:depth]
    assert nearest_settled(index_search, 0, 6) == []


def test_ainvoke_takes_a_per_call_k_and_mode(twin_kb: KnowledgeBase) -> None:
    """Bug: invoke(q, k=3) worked but ainvoke(q, k=3) raised TypeError: LangChain's default async method
    passes no extra arguments to the sync one."""
    retriever = twin_kb.as_retriever(k=2, mode="bm25")
    assert ids(asyncio.run(retriever.ainvoke("刘备", k=3))) == ids(retriever.invoke("刘备", k=3))
    assert len(asyncio.run(retriever.ainvoke("刘备", mode="hybrid"))) == 2
    assert len(asyncio.run(retriever.ainvoke("刘备"))) == 2


@pytest.mark.parametrize("k", [2.5, "3"])
def test_a_k_that_is_not_a_whole_number_is_a_one_line_error(k: object) -> None:
    """Bug: search(q, k=2.5) reached numpy ("Partition index must be integer", a traceback)."""
    with pytest.raises(KnowledgeBaseError, match="whole number"):
        Query(text="刘备", mode="bm25", k=k, threshold=None, rerank=False)  # type: ignore[arg-type]


def test_float_k_through_the_retriever(twin_kb: KnowledgeBase) -> None:
    """Bug: retriever.invoke(q, k=2.5) raised numpy's TypeError instead of a KnowledgeBaseError."""
    with pytest.raises(KnowledgeBaseError, match="whole number"):
        twin_kb.as_retriever(mode="bm25").invoke("刘备", k=2.5)


def test_a_query_that_is_not_text_is_a_one_line_error(twin_kb: KnowledgeBase) -> None:
    """Bug: search(None) and search(b"...") raised AttributeError from deep inside the search."""
    for query in (None, "刘备".encode()):
        with pytest.raises(KnowledgeBaseError, match="must be text"):
            twin_kb.search(query, mode="bm25")  # type: ignore[arg-type]


def test_lone_surrogates_in_a_query_are_searched_around(twin_kb: KnowledgeBase) -> None:
    """Bug: a query with a lone surrogate (`ingest query $'\\xff刘备'`: Python decodes bad argv bytes to
    surrogates; "\\ud800" in a JSON request) failed with OpenCC's UnicodeEncodeError."""
    assert tokenize("\udcff刘备") == tokenize("\ufffd刘备")
    expected = ids(twin_kb.search("刘备", mode="bm25", k=2))
    assert ids(twin_kb.search("\udcff刘备\ud800", mode="bm25", k=2)) == expected


def test_valid_text_tokenizes_as_before() -> None:
    """Guard for the surrogate fix: it must not change the tokens of valid text (stored KBs keep their index)."""
    assert tokenize("諸葛亮借東風") == tokenize("诸葛亮借东风")
    assert "iphone" in tokenize("iPhone") and "iphone" in tokenize("ｉＰｈｏｎｅ")  # full width folded (session 35)
    assert "ｉ" in tokenize("ｉＰｈｏｎｅ", width=False)



def test_as_retriever_takes_langchains_search_kwargs(twin_kb: KnowledgeBase) -> None:
    """Bug guarded: code written for a LangChain vector store calls ``as_retriever(search_kwargs={"k": 2})``
    (and ``search_type=...``); glmkb's ``as_retriever`` raised TypeError on both."""
    retriever = twin_kb.as_retriever(search_kwargs={"k": 2, "mode": "bm25"})
    assert (retriever.k, retriever.mode) == (2, "bm25") and len(retriever.invoke("刘备")) == 2
    threshold = twin_kb.as_retriever(search_type="similarity_score_threshold", search_kwargs={"score_threshold": 0.1})
    assert threshold.score_threshold == 0.1
    for bad in ({"search_type": "mmr"}, {"search_kwargs": {"filter": {"source": "a"}}},
                {"search_type": "similarity_score_threshold"}):
        with pytest.raises(KnowledgeBaseError):
            twin_kb.as_retriever(**bad)
