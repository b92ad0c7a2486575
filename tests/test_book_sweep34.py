"""Whole-book answers on books shaped unlike 三国演义: regressions of sweep 34.

Bugs guarded against (each test names its own):

- a book whose volumes restart the chapter numbers (上卷 第一章..., 下卷 第一章...) had both
  chapter 1s merged into one map step, headed with the first one's title;
- a chapter range with none of the book's chapters (第200回 of a 4-回 book, any range over a book
  without headings) answered "根据已知信息无法回答该问题" instead of saying why;
- a book without chapter headings (or one giant chapter) was read as one chapter: 4 passages in all;
- citation ranges ``[1-3]`` and full-width ``［1］`` passed through unchecked, ``[5-99]`` included;
- a streamed marker longer than 16 characters (``[10, 12, 15, 18, 99]``) went out unchecked;
- in a traditional-script book, chunks naming a person only as 諸葛亮 were not found by name.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from langchain_core.language_models import FakeStreamingListLLM

from chains.book_qa_chain import BookQAChain
from chains.citations import CitationFilter, clean_citations, cited_numbers
from chains.events import Answer, Sources, Token
from chains.summarize import ChapterRangeError
from tests.fixtures.corpus import mini_novel

VOLUMES = (
    "上卷\n"
    "第一章 少年出山\n张三在青城山学艺，师父传他剑法。\n"
    "第二章 初下江湖\n张三下山，遇见李四。\n"
    "第三章 客栈风波\n张三在客栈里打败了恶霸。\n"
    "下卷\n"
    "第一章 重返青城\n十年后张三重返青城山，师父已逝。\n"
    "第二章 决战\n张三与魔头决战于华山之巅。\n"
)


def char_tokens(text: str) -> list[int]:
    return list(range(len(text)))


def make_kb(tmp_path: Path, texts: dict[str, str]) -> Any:
    from kb import KnowledgeBase

    base = KnowledgeBase(tmp_path, "books", create=True, embedding_model="none", chunk_size=60, chunk_overlap=0)
    base.add_texts(texts)
    return base


def make_chain(kb: Any, responses: list[str] | None = None) -> BookQAChain:
    from kb.characters import character_graph

    llm = FakeStreamingListLLM(responses=responses or ["无关"], custom_get_token_ids=char_tokens)
    return BookQAChain(kb=kb, llm=llm, graph=character_graph(kb), max_input_tokens=2000)


def test_volumes_that_restart_numbers_keep_their_chapters_apart(tmp_path: Path) -> None:
    """Bug: 下卷's 第一章 was read and headed as 上卷's 第1章 少年出山 (one key per number)."""
    chain = make_chain(make_kb(tmp_path, {"vol.txt": VOLUMES}))
    picks = chain.select("张三做了哪些事？", chapters=None, source=None)
    assert [p.label() for p in picks] == [
        "第1章 少年出山", "第2章 初下江湖", "第3章 客栈风波", "第1章 重返青城", "第2章 决战",
    ]  # fmt: skip
    for pick in picks:
        assert {d.metadata["chapter_title"] for d in pick.passages} == {pick.title}
    ranged = chain.select("张三做了哪些事？", chapters=(1, 1), source=None)
    assert [p.label() for p in ranged] == ["第1章 少年出山", "第1章 重返青城"]


def test_a_repeated_heading_is_still_one_chapter(tmp_path: Path) -> None:
    """Guard of the fix above: consecutive sections with one number (a running head) stay one chapter."""
    chain = make_chain(make_kb(tmp_path, {"sanguo.txt": mini_novel()}))
    picks = chain.select("孔明做了哪些事？", chapters=None, source=None)
    chapters = [p.chapter for p in picks]
    assert len(chapters) == len(set(chapters)) and 3 in chapters


@pytest.mark.parametrize("chapters", ["第200回", "5-9"])
def test_a_range_outside_the_book_says_so(tmp_path: Path, chapters: str) -> None:
    """Bug: 第200回 of a 4-回 book answered the refusal sentence, as if the book said nothing."""
    chain = make_chain(make_kb(tmp_path, {"sanguo.txt": mini_novel()}))
    with pytest.raises(ChapterRangeError, match="it has chapters 1-4"):
        list(chain.stream_answer("孔明做了哪些事？", chapters=chapters))
    with pytest.raises(ChapterRangeError, match="no chapters 5-9 in sanguo.txt"):
        list(chain.stream_answer("孔明做了哪些事？", chapters=(5, 9), source="sanguo.txt"))


def test_a_range_over_a_book_without_headings_says_so(tmp_path: Path) -> None:
    """Bug: a chapter range over a text without 第N回 headings answered the refusal sentence."""
    chain = make_chain(make_kb(tmp_path, {"plain.txt": "张三在青城山学艺。\n\n张三下山。\n"}))
    with pytest.raises(ChapterRangeError, match="no chapter headings"):
        list(chain.stream_answer("张三做了哪些事？", chapters="1-3"))


def test_the_web_entry_refuses_a_range_outside_the_book_in_chinese(tmp_path: Path) -> None:
    """Bug: the 全书问答 switch and the API's scope "book" answered 第200回
    with the refusal sentence."""
    from app.errors import UserError
    from app.web.book_scope import ask_book

    kb = make_kb(tmp_path, {"sanguo.txt": mini_novel()})
    llm = FakeStreamingListLLM(responses=["无关"], custom_get_token_ids=char_tokens)
    settings = SimpleNamespace(llm=SimpleNamespace(max_input_tokens=2000))
    services = SimpleNamespace(require_llm=lambda: llm, kb=lambda name: kb, settings=settings)
    with pytest.raises(UserError) as caught:
        ask_book(services, "books", "孔明做了哪些事？", chapters="第200回")
    assert "书中找不到 第200回" in caught.value.zh and "it has chapters 1-4" in caught.value.en
    events = list(ask_book(services, "books", "孔明做了哪些事？", chapters="第2-3回"))
    assert isinstance(events[-1], Answer)


def test_a_book_without_headings_is_read_in_parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: a book without chapter headings was one chapter, so a whole-book answer read 4 passages."""
    import chains.book_chapters

    monkeypatch.setattr(chains.book_chapters, "_PART_CHARS", 400)
    text = "".join(f"张三走到第{i}个村子，遇见了王{i}，两人喝酒。\n\n" for i in range(120))
    chain = make_chain(make_kb(tmp_path, {"plain.txt": text}))
    picks = chain.select("张三做了哪些事？", chapters=None, source=None)
    assert len(picks) >= 6  # 400-character parts of ~3,100 characters; was 1 pick
    starts = [p.passages[0].metadata["start"] for p in picks]
    assert starts == sorted(starts) and starts[-1] - starts[0] > 2000
    for pick in picks:
        assert len({d.metadata["start"] // 400 for d in pick.passages}) == 1


def test_citation_ranges_and_full_width_brackets_are_checked() -> None:
    """Bug: [1-3], [5-99] and ［1］ passed through unchecked (and uncounted by ``cited_numbers``)."""
    assert clean_citations("甲[1-3]乙[5-99]丙［2］丁[2–9]", {1, 2, 3}) == "甲[1][2][3]乙丙[2]丁[2][3]"
    assert cited_numbers("见[1-3]与[5]") == [1, 2, 3, 5]
    assert len(cited_numbers("[1-99999999]")) == 100
    keep = CitationFilter({1, 2})
    out = "".join(keep.feed(p) for p in ["甲[", "1", "-", "3]乙［", "9］丙"]) + keep.flush()
    assert out == "甲[1][2]乙丙"


def test_a_range_marker_in_the_answer_resolves_to_read_passages(tmp_path: Path) -> None:
    """Bug: an answer's [1-40] reached the user though only a few passages were read."""
    kb = make_kb(tmp_path, {"sanguo.txt": mini_novel()})
    chain = make_chain(kb, ["孔明出山[1-2]。", "孔明借东风[1-40]。", "孔明出山[1-40]。"])
    events = list(chain.stream_answer("孔明做了哪些事？", chapters="2-3"))
    sources = next(e for e in events if isinstance(e, Sources)).sources
    answer = events[-1]
    assert isinstance(answer, Answer) and not answer.refused
    assert "".join(e.text for e in events if isinstance(e, Token)) == answer.text
    assert cited_numbers(answer.text) == list(range(1, len(sources) + 1)) and "-" not in answer.text


def test_a_long_streamed_marker_is_still_checked() -> None:
    """Bug: ``[10, 12, 15, 18, 99]`` fed token by token passed the 16-character hold unchecked, 99 included."""
    text = "曹操败走[10, 12, 15, 18, 99]。"
    keep = CitationFilter(range(1, 21))
    streamed = "".join(keep.feed(ch) for ch in text) + keep.flush()
    assert streamed == clean_citations(text, range(1, 21)) == "曹操败走[10][12][15][18]。"
    keep = CitationFilter({1})
    assert "".join(keep.feed(ch) for ch in "见[2023 年版]") + keep.flush() == "见[2023 年版]"


def test_a_traditional_script_book_finds_every_chunk_naming_the_person(tmp_path: Path) -> None:
    """Bug: names (simplified, like the graph's) were matched against the raw text, so in a
    traditional-script book the chunks saying only 諸葛亮 (not 孔明) were never picked by name."""
    import chains.book_chapters as book_chapters
    from kb.script import fold_script

    trad = mini_novel().replace("诸葛亮", "諸葛亮").replace("刘备", "劉備")
    assert fold_script("諸葛亮") == "诸葛亮"
    kb = make_kb(tmp_path, {"trad.txt": trad})
    chain = make_chain(kb)
    _, groups = book_chapters.name_terms("孔明做了哪些事？", chain.graph)
    named = book_chapters._chapters_naming(kb, groups, book_chapters._Sections(kb), doc_ids=None, chapters=None)
    chapter_two = [docs for key, docs in named.items() if key[1] == 2]
    assert chapter_two and any("孔明" not in d.page_content and "諸葛亮" in d.page_content for d in chapter_two[0])
