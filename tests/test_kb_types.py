"""kb.types: the one retrieval-mode literal and the chunk-metadata contract, built and parsed once."""

from __future__ import annotations

import typing

import pytest

from kb import KnowledgeBase, KnowledgeBaseError
from kb.types import RETRIEVAL_MODES, RetrievalMode, check_mode, chunk_metadata, parse_chunk_metadata


def test_every_retrieval_mode_declaration_is_the_one_literal() -> None:
    """Regression (glmkb #17.9): the retrieval-mode literal was declared six times (kb, app, configs, ingest)."""
    from app.api.schemas import Mode
    from configs.settings import RetrievalSettings
    from kb.knowledge_base_retriever import KnowledgeBaseRetriever

    assert RETRIEVAL_MODES == ("dense", "bm25", "hybrid")
    assert Mode is RetrievalMode
    assert RetrievalSettings.model_fields["mode"].annotation is RetrievalMode
    assert typing.get_args(KnowledgeBaseRetriever.model_fields["mode"].annotation)[0] is RetrievalMode
    assert check_mode("bm25") == "bm25"
    with pytest.raises(KnowledgeBaseError, match="dense, bm25, hybrid"):
        check_mode("sparse")


def test_chunk_metadata_round_trips_and_refuses_what_is_not_a_chunk() -> None:
    meta = chunk_metadata(source="a.txt", doc_id="0" * 16, chapter=3, chapter_title="标题", start=0, end=10,
                          chunk_id=7, score=1, page=2, section="第三章")
    assert meta["score"] == 1.0 and isinstance(meta["score"], float) and meta["page"] == 2
    assert parse_chunk_metadata({**meta, "unrelated": 1}) == meta
    with pytest.raises(TypeError, match="colour"):
        chunk_metadata(source="a", doc_id="b", chapter=None, chapter_title=None, start=0, end=1, chunk_id=0, colour=1)
    with pytest.raises(KnowledgeBaseError, match="'chunk_id'"):
        parse_chunk_metadata({k: v for k, v in meta.items() if k != "chunk_id"})
    with pytest.raises(KnowledgeBaseError, match="'start' is str"):
        parse_chunk_metadata({**meta, "start": "0"})


def test_search_results_follow_the_contract(tmp_path: object) -> None:
    kb = KnowledgeBase(tmp_path, "t", create=True, embedding_model="none")
    kb.add_texts({"a.txt": "第一回 宴桃园\n刘备关羽张飞桃园结义。" * 20})
    for doc in kb.search("刘备", mode="bm25") + kb.get_chunks("a.txt"):
        assert parse_chunk_metadata(doc.metadata)["source"] == "a.txt"
