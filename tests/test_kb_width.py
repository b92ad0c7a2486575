"""Keyword search that does not depend on character width: ``GDP`` finds ＧＤＰ and ``第１回`` finds 第1回
(``kb.tokenizing``, NFKC).

Regression: BM25 tokens were cut from the text as written, so a question typed in half-width forms missed a
document typed with a full-width IME (and the reverse): ``ｉＰｈｏｎｅ`` and ``iphone`` shared no token.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from configs import Settings
from kb import KnowledgeBase
from kb.tokenizing import tokenize

FULL = "公司２０２３年ＧＤＰ报告：第１季度ｉＰｈｏｎｅ销量上升。"
HALF = "公司2023年GDP报告：第1季度iPhone销量上升。"
OTHER = {"a.txt": "赤壁之战，曹操大败。", "b.txt": "刘备三顾茅庐，请诸葛亮出山。"}


def keyword_kb(root: Path, name: str, texts: dict[str, str]) -> KnowledgeBase:
    settings = Settings(kb_root=root, embedding={"model": "none"}, retrieval={"mode": "bm25"})
    kb = KnowledgeBase.from_settings(settings, name=name, create=True)
    kb.add_texts(texts)
    return kb


def top_source(kb: KnowledgeBase, question: str) -> str | None:
    hits = kb.search(question, k=1)
    return hits[0].metadata["source"] if hits else None


def test_full_width_and_half_width_text_cut_to_the_same_tokens() -> None:
    """Differential: the two widths of one sentence give the same tokens (NFKC as the reference)."""
    assert tokenize(FULL) == tokenize(HALF)
    assert tokenize(FULL, width=False) != tokenize(HALF, width=False)


@pytest.mark.parametrize(("text", "question"), [(FULL, "GDP"), (HALF, "ＧＤＰ"), (FULL, "iPhone"), (HALF, "ｉＰｈｏｎｅ"),
                                                (FULL, "2023")])
def test_a_question_in_either_width_finds_the_document(tmp_path: Path, text: str, question: str) -> None:
    kb = keyword_kb(tmp_path, "kb", {**OTHER, "report.txt": text})
    assert top_source(kb, question) == "report.txt"
    assert kb.get_document_text("report.txt") == text  # stored as written


def test_a_knowledge_base_from_before_width_folding_keeps_its_cut_until_a_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest without ``width`` (built before) is queried unfolded, as its index was cut, so a full-width
    question still finds full-width text; the next build re-cuts the stored chunks and records ``width``."""
    import functools

    import kb.build

    old_settings = {k: v for k, v in kb.build.BM25_SETTINGS.items() if k != "width"}
    with monkeypatch.context() as old:
        old.setattr(kb.build, "BM25_SETTINGS", old_settings)
        old.setattr(kb.build, "tokenize", functools.partial(tokenize, width=False))
        before = keyword_kb(tmp_path, "before", {**OTHER, "report.txt": FULL})
    assert "width" not in before.manifest["bm25"]
    reopened = KnowledgeBase.from_settings(Settings(kb_root=tmp_path, embedding={"model": "none"},
                                                    retrieval={"mode": "bm25"}), name="before")
    assert top_source(reopened, "ＧＤＰ") == "report.txt"
    assert top_source(reopened, "GDP") is None  # as before: its tokens are full-width
    reopened.add_texts({"note.txt": "附记。"})
    assert reopened.manifest["bm25"]["width"] == "nfkc"
    assert top_source(reopened, "GDP") == top_source(reopened, "ＧＤＰ") == "report.txt"
