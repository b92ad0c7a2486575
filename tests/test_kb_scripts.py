"""Keyword search that does not depend on the script: simplified questions find traditional text and the
reverse (``kb.tokenizing.fold_script``).

Regression: BM25 tokens were cut from the text as written, so a simplified question against a
traditional-script novel (a Big5 天龍八部) matched only the characters both scripts share: on the
sanguo QA set recall@5 fell from 0.729 to 0.500 (docs/KB.md, "Retrieval across scripts").
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import opencc
import pytest

from configs import Settings
from kb import KnowledgeBase
from kb.tokenizing import tokenize

QUESTIONS = [
    "刘备、关羽、张飞在哪里结拜？", "关羽的兵器叫什么？", "张飞鞭打的是谁？", "董卓要废掉哪个皇帝？", "曹操献刀给谁？",
]


@pytest.fixture(scope="module")
def to_traditional() -> Any:
    return opencc.OpenCC("s2t").convert


@pytest.fixture(scope="module")
def sanguo_text(sanguo_path: Path) -> str:
    return sanguo_path.read_text(encoding="utf-8")[:40_000]


def keyword_kb(root: Path, name: str, text: str) -> KnowledgeBase:
    settings = Settings(kb_root=root, embedding={"model": "none"}, retrieval={"mode": "bm25"})
    kb = KnowledgeBase.from_settings(settings, name=name, create=True)
    kb.add_texts({"sanguo.txt": text})
    return kb


def ranking(kb: KnowledgeBase, question: str) -> list[tuple[int, float]]:
    return [(d.metadata["chunk_id"], round(d.metadata["score"], 4)) for d in kb.search(question, k=5)]


def test_a_question_ranks_the_same_chunks_in_either_script(
    tmp_path: Path, sanguo_text: str, to_traditional: Any
) -> None:
    """Differential: the traditional text's knowledge base ranks a simplified question, and its traditional
    form, exactly as the simplified text's ranks the question (same chunks, same scores)."""
    simplified = keyword_kb(tmp_path, "simplified", sanguo_text)
    traditional = keyword_kb(tmp_path, "traditional", to_traditional(sanguo_text))
    assert traditional.get_document_text("sanguo.txt") == to_traditional(sanguo_text)  # the text as written
    for question in QUESTIONS:
        expected = ranking(simplified, question)
        assert expected and ranking(traditional, question) == expected
        assert ranking(traditional, to_traditional(question)) == expected
        assert ranking(simplified, to_traditional(question)) == expected


def test_a_knowledge_base_from_before_keeps_its_ranking_until_a_build_folds_it(
    tmp_path: Path, sanguo_text: str, to_traditional: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A knowledge base built before script folding (no ``script`` in its manifest's ``bm25``) is queried
    with unfolded tokens, as its index was cut; the next build re-tokenizes its stored chunks and then
    ranks as a new one."""
    import kb.build

    old_settings = {k: v for k, v in kb.build.BM25_SETTINGS.items() if k != "script"}
    with monkeypatch.context() as old:
        old.setattr(kb.build, "BM25_SETTINGS", old_settings)
        old.setattr(kb.build, "tokenize", functools.partial(tokenize, fold=False))
        before = keyword_kb(tmp_path, "before", to_traditional(sanguo_text))
        unfolded = ranking(before, QUESTIONS[0])
    assert "script" not in before.manifest["bm25"]
    reopened = KnowledgeBase.from_settings(Settings(kb_root=tmp_path, embedding={"model": "none"}), name="before")
    assert ranking(reopened, QUESTIONS[0]) == unfolded
    fresh = keyword_kb(tmp_path, "fresh", to_traditional(sanguo_text))
    assert ranking(fresh, QUESTIONS[0]) != unfolded

    reopened.add_texts({"note.txt": "附记：本书据毛宗岗评本。"})
    assert reopened.manifest["bm25"]["script"] == "t2s"
    assert [i for i, _ in ranking(reopened, QUESTIONS[0])] == [i for i, _ in ranking(fresh, QUESTIONS[0])]
