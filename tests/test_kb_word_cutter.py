"""BM25 words cut by rjieba (jieba's algorithm and dictionary in Rust) instead of jieba (``kb.tokenizing``).

Why: jieba was half of a whole-novel ``ingest build`` on a GPU machine (3.3 s of 三国演义's chunks here;
rjieba 0.15 s). A knowledge base built before keeps being queried with jieba's words until a build
re-cuts its chunks.
"""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from configs import Settings
from kb import KnowledgeBase
from kb.tokenizing import JIEBA_WORDS, WORDS, cut_for_search, tokenize

OTHER = {"a.txt": "赤壁之战，曹操大败。", "b.txt": "刘备三顾茅庐，请诸葛亮出山。"}


def chunks_of(path: Path, *, size: int = 500, limit: int = 120) -> list[str]:
    text = path.read_text(encoding="utf-8")
    return [text[i:i + size] for i in range(0, len(text), size)][:limit]


@pytest.mark.parametrize("name", ["sanguo_path", "xiyouji_path"])
def test_rjieba_cuts_the_words_jieba_cuts(name: str, request: pytest.FixtureRequest) -> None:
    """Differential against jieba itself on real novels: the same search-mode words in (nearly) every
    chunk. Measured on the whole novels: 1,326 of 1,326 chunks of 三国演义, 1,596 of 1,598 of 西游记."""
    chunks = chunks_of(request.getfixturevalue(name))
    same = sum(cut_for_search(c) == cut_for_search(c, words=JIEBA_WORDS) for c in chunks)
    assert same >= 0.98 * len(chunks), f"{same} of {len(chunks)} chunks cut alike"


def keyword_kb(root: Path, name: str, texts: dict[str, str]) -> KnowledgeBase:
    settings = Settings(kb_root=root, embedding={"model": "none"}, retrieval={"mode": "bm25"})
    kb = KnowledgeBase.from_settings(settings, name=name, create=True)
    kb.add_texts(texts)
    return kb


def test_a_knowledge_base_cut_by_jieba_is_queried_with_jieba_until_a_build_recuts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest whose ``tokenizer`` is jieba's (built before rjieba) has its questions cut by jieba, as its
    index was; the next build re-cuts the stored chunks and records rjieba."""
    import kb.build
    import kb.search

    with monkeypatch.context() as old:
        old.setattr(kb.build, "BM25_SETTINGS", {**kb.build.BM25_SETTINGS, "tokenizer": JIEBA_WORDS})
        old.setattr(kb.build, "tokenize", functools.partial(tokenize, words=JIEBA_WORDS))
        before = keyword_kb(tmp_path, "before", {**OTHER, "story.txt": "孙悟空大闹天宫，玉帝请来如来佛祖。"})
    assert before.manifest["bm25"]["tokenizer"] == JIEBA_WORDS
    cutters: list[str] = []
    cut = kb.search.tokenize
    monkeypatch.setattr(kb.search, "tokenize", lambda text, **options: cutters.append(options["words"]) or cut(
        text, **options))
    reopened = KnowledgeBase.from_settings(Settings(kb_root=tmp_path, embedding={"model": "none"},
                                                    retrieval={"mode": "bm25"}), name="before")
    assert reopened.search("大闹天宫", k=1)[0].metadata["source"] == "story.txt"
    assert cutters == [JIEBA_WORDS]
    reopened.add_texts({"note.txt": "附记。"})
    assert reopened.manifest["bm25"]["tokenizer"] == WORDS
    assert reopened.search("大闹天宫", k=1)[0].metadata["source"] == "story.txt"
    assert cutters[-1] == WORDS


def test_rjieba_tags_words_as_jieba_posseg_does(sanguo_path: Path) -> None:
    """Differential for ``kb.characters``' whole-text part-of-speech pass (rjieba, HMM off) against
    ``jieba.posseg``: the same words, and the same tags but for single characters (no name is one;
    posseg tags some ``x``: 郗, 7 of 三国演义's 470,765 words)."""
    import jieba.posseg as pseg
    import rjieba

    from kb.tokenizing import initialize_jieba

    initialize_jieba()
    text = sanguo_path.read_text(encoding="utf-8")[:150_000]
    reference = [(w.word, w.flag) for w in pseg.cut(text, HMM=False)]
    tagged = [tuple(pair) for pair in rjieba.tag(text, hmm=False)]
    assert [w for w, _ in tagged] == [w for w, _ in reference]
    assert all(len(a[0]) == 1 for a, b in zip(reference, tagged) if a != b)
