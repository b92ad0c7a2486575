"""The shipped QA set and ``kb.evaluate``: evidence is real, metrics are right, BM25 quality holds."""

from __future__ import annotations

import json
from difflib import SequenceMatcher
from pathlib import Path

import pytest
from langchain_core.documents import Document

from kb import KnowledgeBase, KnowledgeBaseError, evaluate, load_qa
from kb.evaluation import first_hit_rank

QA_FILE = Path(__file__).parent / "data" / "sanguo_qa.jsonl"


def test_qa_file_is_well_formed(sanguo_novel_path: Path) -> None:
    text = sanguo_novel_path.read_text(encoding="utf-8")
    rows = [json.loads(line) for line in QA_FILE.read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 40
    assert len({r["q"] for r in rows}) == len(rows), "no duplicate questions"
    for row in rows:
        assert row["source"] == "sanguo.txt"
        assert text.count(row["evidence"]) == 1, f"evidence must occur exactly once: {row['evidence']}"
        match = SequenceMatcher(None, row["q"], row["evidence"], autojunk=False).find_longest_match()
        assert match.size <= 3, f"question copies the evidence ({row['q']!r})"


def test_first_hit_rank_uses_overlap_with_the_evidence() -> None:
    def doc(doc_id: str, start: int, end: int) -> Document:
        return Document(page_content="x", metadata={"doc_id": doc_id, "start": start, "end": end})

    places = [("d1", 100, 120)]
    assert first_hit_rank([doc("d1", 0, 100), doc("d2", 100, 120), doc("d1", 119, 300)], places) == 3
    assert first_hit_rank([doc("d1", 120, 200)], places) is None  # touching is not overlapping
    assert first_hit_rank([doc("d1", 90, 101)], places) == 1


def test_load_qa_reports_the_bad_line(tmp_path: Path) -> None:
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"q": "谁？", "evidence": "玄德"}\n{"q": "缺证据"}\n', encoding="utf-8")
    with pytest.raises(KnowledgeBaseError, match=r"qa.jsonl:2"):
        load_qa(bad)
    bad.write_text("not json\n", encoding="utf-8")
    with pytest.raises(KnowledgeBaseError, match=r"qa.jsonl:1: not valid JSON"):
        load_qa(bad)


def test_evaluate_on_a_small_kb(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = KnowledgeBase(tmp_path, "e", create=True, embedding_model="none", chunk_size=200, chunk_overlap=40)
    kb.add_files([sanguo_excerpts["a"], sanguo_excerpts["b"]])
    qa = tmp_path / "qa.jsonl"
    rows = [
        {"q": "刘关张在哪里结拜", "evidence": "于桃园中，备下乌牛白马祭礼等项", "source": "sanguo_a.txt"},
        {"q": "李肃替董卓送给吕布的马", "evidence": "赤兔马亦董公所赠也"},
        {"q": "完全无关的问题 火星 飞船", "evidence": "玄德幼孤"},
    ]
    qa.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    result = evaluate(kb, load_qa(qa), mode="bm25", k=10)
    assert result.questions == 3 and result.ranks[2] is None
    assert result.recall[10] == pytest.approx(sum(r is not None for r in result.ranks) / 3)
    assert result.mrr == pytest.approx(sum(1 / r for r in result.ranks if r) / 3)
    assert set(result.as_dict()) >= {"recall@1", "recall@3", "recall@5", "recall@10", "mrr"}
    qa.write_text(json.dumps({"q": "x", "evidence": "这句话不在书里"}, ensure_ascii=False), encoding="utf-8")
    with pytest.raises(KnowledgeBaseError, match="does not occur"):
        evaluate(kb, load_qa(qa), mode="bm25")


def test_bm25_recall_on_the_whole_novel(tmp_path: Path, sanguo_novel_path: Path) -> None:
    """Quality guard (docs/KB.md): chapter-aware 400/80 chunks + jieba words and characters
    reach recall@5 0.73 on the shipped questions, where naive 400-char chunks with plain
    jieba BM25 reach 0.50."""
    kb = KnowledgeBase(tmp_path, "sanguo", create=True, embedding_model="none", chunk_size=400, chunk_overlap=80)
    kb.add_files([sanguo_novel_path])
    result = evaluate(kb, load_qa(QA_FILE), mode="bm25", k=10)
    assert result.recall[5] >= 0.70
    assert result.recall[10] >= 0.80
