"""A question that names chapters is answered from those chapters (``kb.search.chapter_chunk_ids``).

Regression: "第三回讲了什么？" was searched like any question, and its few words ("第三回", "讲") matched
chunks all over the book (the heading of 第三十三回, any 三), so the answer's passages were mostly from other
chapters; "第3回" (Arabic digits) could not even match the heading 第三回.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import Settings
from kb import KnowledgeBase
from kb.search import filled_from_chapters
from kb.chapter_references import chapters_named
from tests.fixtures.kb import chapter_excerpt


@pytest.fixture(scope="module")
def sanguo_kb(tmp_path_factory: pytest.TempPathFactory, sanguo_path: Path) -> KnowledgeBase:
    text = chapter_excerpt(sanguo_path.read_text(encoding="utf-8"), 1, 12)
    settings = Settings(kb_root=tmp_path_factory.mktemp("kbs"), embedding={"model": "none"}, retrieval={"mode": "bm25"})
    kb = KnowledgeBase.from_settings(settings, name="sanguo", create=True)
    kb.add_texts({"sanguo.txt": text})
    return kb


def chapters_of(kb: KnowledgeBase, question: str, k: int = 6) -> list[int | None]:
    return [d.metadata["chapter"] for d in kb.search(question, k=k)]


@pytest.mark.parametrize(("question", "expected"), [
    ("第三回讲了什么？", (3, 3)), ("第3回讲了什么", (3, 3)), ("第１２回", (12, 12)), ("第 十二 章的内容", (12, 12)),
    ("第3到5回里曹操做了什么", (3, 5)), ("第五回至第七回", (5, 7)), ("第40-60回", (40, 60)), ("第一百二十回", (120, 120)),
    ("曹操是谁？", None), ("第三回和第五回有何不同", None), ("第二卷", None),
])
def test_chapters_named_in_a_question(question: str, expected: tuple[int, int] | None) -> None:
    assert chapters_named(question) == expected


@pytest.mark.parametrize("question", ["第三回讲了什么？", "第3回讲了什么？", "第三回里董卓想废掉谁？"])
def test_a_question_about_one_chapter_gets_only_its_passages(sanguo_kb: KnowledgeBase, question: str) -> None:
    chapters = chapters_of(sanguo_kb, question)
    assert len(chapters) == 6 and set(chapters) == {3}


def test_a_chapter_range_keeps_its_chapters_and_ranks_by_the_question(sanguo_kb: KnowledgeBase) -> None:
    docs = sanguo_kb.search("第1至3回中关羽的兵器", k=4)
    assert docs and all(1 <= d.metadata["chapter"] <= 3 for d in docs)
    assert "关羽" in docs[0].page_content  # ranked by the question inside the range, not in text order


def test_questions_without_chapters_or_with_absent_ones_search_the_whole_book(sanguo_kb: KnowledgeBase) -> None:
    """A chapter the knowledge base lacks (第200回 of 12) narrows nothing: searched as if not named."""
    assert len(set(chapters_of(sanguo_kb, "曹操献刀"))) > 1
    assert len(set(chapters_of(sanguo_kb, "第200回里曹操献刀"))) > 1


def test_hybrid_narrows_both_rankings(tmp_path: Path, sanguo_path: Path, tiny_embedding_path: Path) -> None:
    text = chapter_excerpt(sanguo_path.read_text(encoding="utf-8"), 1, 6)
    settings = Settings(kb_root=tmp_path, embedding={"model": str(tiny_embedding_path), "device": "cpu"},
                        retrieval={"mode": "hybrid"})
    kb = KnowledgeBase.from_settings(settings, name="hybrid", create=True)
    kb.add_texts({"sanguo.txt": text})
    for mode in ("hybrid", "dense"):
        docs = kb.search("第四回里曹操做了什么？", k=5, mode=mode)
        assert len(docs) == 5 and {d.metadata["chapter"] for d in docs} == {4}, mode


def test_filled_from_chapters_appends_the_rest_in_reading_order() -> None:
    chapter = dict.fromkeys([7, 3, 9, 4])
    assert filled_from_chapters([(9, 2.5)], chapter, want=3) == [(9, 2.5), (7, 0.0), (3, 0.0)]
    assert filled_from_chapters([(9, 2.5), (3, 1.0)], chapter, want=2) == [(9, 2.5), (3, 1.0)]
