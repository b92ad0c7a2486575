"""kb.splitting: chapter detection on both novels, exact offsets, no chunk across chapters."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kb import chinese_number, split_chapters, split_document, splitting
from kb.splitting import (
    Chapter,
    ChapterScanner,
    Chunk,
    iter_chunks,
    pack_sentences,
    split_plain,
)


@pytest.mark.parametrize(
    ("numeral", "value"),
    [("一", 1), ("十", 10), ("十二", 12), ("二十", 20), ("九十九", 99), ("一百", 100), ("一百三", 103),
     ("一百零三", 103), ("一百十八", 118), ("一百二十", 120), ("两百", 200), ("一千零一", 1001), ("12", 12), ("１２", 12),
     ("壹", 1), ("拾贰", 12), ("贰拾", 20), ("壹佰零叁", 103), ("廿", 20), ("廿一", 21), ("卅五", 35), ("一百廿三", 123),
     ("一萬", 10000)],
)
def test_chinese_numerals(numeral: str, value: int) -> None:
    assert chinese_number(numeral) == value


def test_financial_numerals_and_nian_number_chapters() -> None:
    """Bug guarded: 第壹章 (the financial numerals some books print) and 第廿一回 (廿 = 20, older books) were
    no headings, so such a book had no chapters at all; chapter ranges read the same numerals."""
    from chains.summarize import parse_chapter_range

    text = "第壹章 开端\n内容一。\n第贰章 发展\n内容二。\n第拾贰章 终\n内容三。\n"
    assert [(c.number, c.title) for c in split_chapters(text)] == [(1, "开端"), (2, "发展"), (12, "终")]
    old = "第十九回 甲\n一。\n第廿回 乙\n二。\n第廿一回 丙\n三。\n"
    assert [c.number for c in split_chapters(old)] == [19, 20, 21]
    assert parse_chapter_range("第壹至拾贰章") == (1, 12) and parse_chapter_range("廿-廿一") == (20, 21)


@pytest.mark.parametrize(("fixture", "count"), [("sanguo_novel_path", 120), ("xiyouji_novel_path", 100)])
def test_novel_chapters_are_found_in_order(fixture: str, count: int, request: pytest.FixtureRequest) -> None:
    text = Path(request.getfixturevalue(fixture)).read_text(encoding="utf-8")
    sections = split_chapters(text)
    preamble, chapters = sections[0], sections[1:]
    assert preamble.number is None and preamble.start == 0 and preamble.end == chapters[0].start
    assert [c.number for c in chapters] == list(range(1, count + 1))
    for ch, nxt in zip(chapters, chapters[1:]):
        assert ch.end == nxt.start
        assert text[ch.start : ch.end].startswith(ch.heading)
        assert text[ch.start - 1] == "\n"  # a heading starts its own line
    assert chapters[-1].end == len(text)


def test_sanguo_late_chapter_numbers_and_titles(sanguo_novel_path: Path) -> None:
    """第一百三回 is chapter 103 (not 130) and 第一百十八回 is 118, as the corpus numbers them."""
    text = sanguo_novel_path.read_text(encoding="utf-8")
    chapters = {c.number: c for c in split_chapters(text) if c.number}
    assert chapters[103].heading == "第一百三回"
    assert chapters[103].title == "上方谷司马受困 五丈原诸葛禳星"
    assert chapters[118].heading == "第一百十八回"
    assert chapters[1].title == "宴桃园豪杰三结义 斩黄巾英雄首立功"
    assert "五丈原" in text[chapters[104].start : chapters[104].end]


@pytest.mark.parametrize("fixture", ["sanguo_path", "xiyouji_path"])
def test_chunks_have_exact_offsets_and_never_straddle_chapters(fixture: str, request: pytest.FixtureRequest) -> None:
    text = Path(request.getfixturevalue(fixture)).read_text(encoding="utf-8")
    sections = split_chapters(text)
    chunks = split_document(text, chunk_size=400, chunk_overlap=80)
    assert len(chunks) > len(text) // 400  # 1,700+ on the whole novel, 130+ on the excerpt
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text
        assert chunk.text == chunk.text.strip()
        owner = [s for s in sections if s.start <= chunk.start and chunk.end <= s.end]
        assert len(owner) == 1, f"chunk {chunk.start}-{chunk.end} crosses a chapter boundary"
        assert owner[0].number == chunk.chapter and owner[0].title == chunk.chapter_title
    # Every chapter is covered from its heading to its last sentence.
    firsts = {c.chapter: c for c in reversed(chunks)}
    for section in sections:
        assert text[firsts[section.number].start :].startswith(text[section.start : section.end].strip()[:10])
    assert max(len(c.text) for c in chunks) <= 400


def test_preamble_is_chapter_none(sanguo_path: Path) -> None:
    text = sanguo_path.read_text(encoding="utf-8")
    first = split_document(text, chunk_size=400, chunk_overlap=80)[0]
    assert first.chapter is None and first.chapter_title is None
    assert first.text.startswith("三国演义") and "临江仙" in first.text


def test_a_table_of_contents_is_preamble_not_a_second_set_of_chapters(sanguo_path: Path) -> None:
    """Regression: a .txt novel that opens with a 目录 of every chapter line (as web novels do)
    split into 120 one-line chapters, then the 120 real ones: every chapter number twice. The
    contents' heading lines (nothing under them, the same heading and title again later over
    text) now belong to the preamble; streamed in blocks, the same."""
    text = sanguo_path.read_text(encoding="utf-8")
    plain = split_chapters(text)
    lines = [" ".join(text[c.start: text.index("\n", c.start)].split()) for c in plain if c.number is not None]
    contents = "目录\n\n" + "\n".join(lines) + "\n\n"
    with_contents = split_chapters(contents + text)
    shift = len(contents)
    assert with_contents[0].number is None and with_contents[0].end == plain[1].start + shift
    assert [(c.number, c.title, c.start - shift, c.end - shift) for c in with_contents[1:]] == [
        (c.number, c.title, c.start, c.end) for c in plain[1:]]
    cuts = list(range(0, len(contents) + 5000, 37))
    assert streamed(in_blocks(contents + text[:20_000], cuts), chunk_size=400, chunk_overlap=80)[0] == split_chapters(
        contents + text[:20_000])
    bare = "第一回 甲\n第二回 乙\n"  # headings with nothing under them and no later copy stay chapters
    assert [c.number for c in split_chapters(bare)] == [1, 2]


def test_volumes_over_chapters_fold_into_the_chapter_after_them() -> None:
    """Regression: a web novel's 第一卷 over 第一章..第二章 split into chapter 1 (the volume's one
    line), chapter 1 (第一章), chapter 2, chapter 2 (第二卷)...: every volume number beside a chapter
    number. A volume heading now starts the chapter after it; a text numbered only in 卷 keeps
    its volumes as chapters; streamed in blocks, the same."""
    text = (
        "序言。\n"
        "第一卷 风起\n本卷说明。\n"
        "第一章 开始\n正文一。\n"
        "第二章 继续\n正文二。\n"
        "第二卷 云涌\n"
        "第三章 再起\n正文三。\n"
    )
    chapters = split_chapters(text)
    assert [(c.number, c.title) for c in chapters] == [(None, None), (1, "开始"), (2, "继续"), (3, "再起")]
    assert [text[c.start : c.end] for c in chapters] == [
        "序言。\n", "第一卷 风起\n本卷说明。\n第一章 开始\n正文一。\n", "第二章 继续\n正文二。\n",
        "第二卷 云涌\n第三章 再起\n正文三。\n"]
    assert streamed(in_blocks(text, list(range(0, len(text), 3))), chunk_size=400, chunk_overlap=80)[0] == chapters
    assert split_chapters("第一卷 风起\n第一章 开始\n正文。\n")[0].start == 0  # no empty preamble
    volumes_only = "第一卷 甲\n正文一。\n第二卷 乙\n正文二。\n"
    assert [(c.number, c.title) for c in split_chapters(volumes_only)] == [(1, "甲"), (2, "乙")]


def test_headings_of_other_shapes() -> None:
    text = (
        "序言在此。\n"
        "第12章 风起\n正文一。\n"
        "## 第十三章：云涌\n正文二。\n"
        "　第二卷\n正文三。\n"
        "第三节\t尾声\n正文四。\n"
        "第二回合，张飞又战。这一行不是标题。\n"
        "正文 第十四章 归来\n正文五。\n"  # a web novel's 正文 label before the heading
    )
    sections = split_chapters(text)
    assert [(s.number, s.title) for s in sections] == [
        (None, None), (12, "风起"), (13, "云涌"), (3, "尾声"), (14, "归来")  # 第二卷 over 第三节 starts that chapter
    ]
    assert text[sections[3].start :].startswith("　第二卷\n正文三。\n第三节")
    assert [(s.number, s.title) for s in split_chapters("　第二卷\n正文三。\n")] == [(2, "第二卷")]
    for chunk in split_document(text, chunk_size=50, chunk_overlap=10):
        assert text[chunk.start : chunk.end] == chunk.text


def test_traditional_and_episode_units_are_chapters_and_ranges() -> None:
    """Regression: 第3節 (traditional script) and 第十二话 / 第12話 (web and light novels' episodes)
    were not headings, and 第1-3话 was not a chapter range; the splitter and the range parser
    read one unit list (CHAPTER_UNITS)."""
    from chains.summarize import parse_chapter_range

    text = "第3節 繁體\n正文一。\n第十二话 换话\n正文二。\n第13話 續話\n正文三。\n"
    assert [(s.number, s.title, s.heading) for s in split_chapters(text)] == [
        (3, "繁體", "第3節"), (12, "换话", "第十二话"), (13, "續話", "第13話")]
    assert parse_chapter_range("第1-3话") == (1, 3) and parse_chapter_range("第五節") == (5, 5)


def test_sentences_keep_their_closing_quotes() -> None:
    text = "第一回 测试\n" + "玄德曰：“此人何也？”云长曰：“吾弟也。”飞大笑曰：“好！好！”" * 4
    spans = pack_sentences(text, 0, len(text), chunk_size=40, chunk_overlap=0)
    for start, end in spans:
        assert text[end - 1] in "”\n测" or end == len(text)
        assert text[start] not in "”。！？"


def test_overlap_repeats_the_last_sentences() -> None:
    sentences = [f"第{i}句话在这里。" for i in range(1, 30)]
    text = "".join(sentences)
    spans = pack_sentences(text, 0, len(text), chunk_size=40, chunk_overlap=16)
    for (s1, e1), (s2, e2) in zip(spans, spans[1:]):
        assert s1 < s2 <= e1, "neighbouring chunks share their boundary sentence"
        assert e1 - s2 <= 16
        assert e1 - s1 <= 40


def test_over_long_sentence_is_cut_at_commas() -> None:
    text = "，".join(["一二三四五六七八九"] * 30) + "。"
    chunks = split_plain(text, chunk_size=50, chunk_overlap=0)
    pieces = pack_sentences(text, 0, len(text), chunk_size=50, chunk_overlap=0)
    assert all(e - s <= 50 for s, e in pieces)
    assert all(text[e - 1] in "，。" for s, e in pieces)
    assert all(text[c.start : c.end] == c.text for c in chunks)


def test_plain_documents_fall_back_to_recursive_splitter() -> None:
    text = "人工智能是计算机科学的一个分支。它企图了解智能的实质。\n\n" * 40
    chunks = split_document(text, chunk_size=80, chunk_overlap=20)
    assert len(chunks) > 10
    assert all(c.chapter is None for c in chunks)
    assert all(text[c.start : c.end] == c.text and len(c.text) <= 80 for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="chunk_overlap"):
        split_document("第一回\n文字。", chunk_size=10, chunk_overlap=10)


@settings(max_examples=60, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("天下大势分久必合。！？；…”」\n 第一二回章十")), min_size=1, max_size=400),
    size=st.integers(min_value=5, max_value=60),
    overlap_ratio=st.floats(min_value=0, max_value=0.9),
)
def test_offsets_are_exact_for_any_text(text: str, size: int, overlap_ratio: float) -> None:
    overlap = int(size * overlap_ratio)
    chunks = split_document(text, chunk_size=size, chunk_overlap=overlap)
    for chunk in chunks:
        assert text[chunk.start : chunk.end] == chunk.text and chunk.text.strip()
    covered = "".join(c.text for c in chunks)
    assert set(covered) >= {c for c in text if not c.isspace()}, "no text is dropped"


def test_a_piece_may_start_where_the_previous_one_started() -> None:
    """Regression (found by hypothesis): with overlap the splitter returned '””' and then
    '”” ””' from the same offset, and locating the second piece after the first one's start
    raised "text splitter returned text that is not in the document"."""
    text = " ”” ””"
    chunks = split_document(text, chunk_size=5, chunk_overlap=3)
    assert [(c.text, c.start) for c in chunks] == [("””", 1), ("”” ””", 1)]
    assert all(text[c.start : c.end] == c.text for c in chunks)


def test_repeated_passages_get_their_own_offsets() -> None:
    """Regression: the recursive fallback located each piece with str.find from the previous
    start, so identical repeated paragraphs all pointed at an early copy of the text."""
    text = "同一段落的文字在这里。它会重复出现。\n\n" * 30
    chunks = split_document(text, chunk_size=40, chunk_overlap=10)
    starts = [c.start for c in chunks]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert chunks[-1].end == len(text.rstrip())


# --- streaming: the same chapters and chunks from text fed in blocks ------------------------


def in_blocks(text: str, cuts: list[int]) -> list[str]:
    """``text`` cut at the given offsets (sorted, deduplicated, inside the text)."""
    points = [0, *sorted({c for c in cuts if 0 < c < len(text)}), len(text)]
    return [text[a:b] for a, b in zip(points, points[1:])]


def streamed(blocks: list[str], *, chunk_size: int, chunk_overlap: int) -> tuple[list[Chapter], list[Chunk]]:
    scanner = ChapterScanner()
    for block in blocks:
        scanner.feed(block)
    chapters = scanner.finish()
    return chapters, list(iter_chunks(iter(blocks), chapters, chunk_size=chunk_size, chunk_overlap=chunk_overlap))


@settings(max_examples=80, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(list("天下大势分久必合。！？；…”」\n\r \u3000#：第一二回章十12")), max_size=500),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=12),
    size=st.integers(min_value=5, max_value=60),
)
def test_blocks_give_the_same_chapters_and_chunks_as_the_whole_text(text: str, cuts: list[int], size: int) -> None:
    chapters, chunks = streamed(in_blocks(text, cuts), chunk_size=size, chunk_overlap=size // 4)
    assert chapters == split_chapters(text)
    assert chunks == split_document(text, chunk_size=size, chunk_overlap=size // 4)


def test_a_novel_streamed_in_blocks_splits_as_a_whole(sanguo_path: Path) -> None:
    text = sanguo_path.read_text(encoding="utf-8")
    cuts = list(range(0, len(text), 4099)) + [text.index("第二回") + 1, text.index("第三回") + 3]
    assert streamed(in_blocks(text, cuts), chunk_size=400, chunk_overlap=80) == (
        split_chapters(text),
        split_document(text, chunk_size=400, chunk_overlap=80),
    )


def test_an_over_long_line_is_never_a_heading() -> None:
    """A streamed scan holds at most MAX_HEADING_LINE characters of a line, so the whole-text
    split must ignore longer heading-shaped lines too, or the two would disagree."""
    long_line = " " * splitting.MAX_HEADING_LINE + "第二回 标题"
    text = f"第一回 开始\n正文。\n{long_line}\n更多正文。"
    assert [c.number for c in split_chapters(text)] == [1]
    assert streamed(in_blocks(text, list(range(0, len(text), 97))), chunk_size=50, chunk_overlap=10)[0] == split_chapters(text)


@pytest.mark.parametrize("headings", [True, False])
def test_sections_longer_than_the_limit_are_cut_at_line_ends(headings: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(splitting, "SECTION_LIMIT", 2000)
    body = "".join(f"第{i}句话说的是这件事。" + ("\n" if i % 7 == 0 else "") for i in range(1500))
    text = ("第一回 长章\n" if headings else "") + body
    chapters, chunks = streamed(in_blocks(text, list(range(0, len(text), 333))), chunk_size=100, chunk_overlap=20)
    assert chunks == split_document(text, chunk_size=100, chunk_overlap=20)
    assert all(text[c.start : c.end] == c.text and len(c.text) <= 100 for c in chunks)
    starts = [c.start for c in chunks]
    assert starts == sorted(starts) and chunks[-1].end == len(text.rstrip())
    # Chunks never straddle a section cut: some chunk ends right before a line break deep in the text.
    assert any(c.end > 2000 and text[c.end] == "\n" for c in chunks[:-1])


def test_a_long_line_without_punctuation_is_split_in_bounded_memory() -> None:
    """Memory of a streamed split follows SECTION_LIMIT, not the document (issue 9); also a
    regression guard: periodic text without separators made split_plain place each piece at the
    last copy in its window, drifting until "text splitter returned text that is not in the
    document"."""
    block = "天下大势分久必合合久必分" * 1000
    total = 1_200_000  # six sections

    def blocks() -> Iterator[str]:
        for _ in range(total // len(block)):
            yield block

    tracemalloc.start()
    try:
        count = end = 0
        for chunk in iter_chunks(blocks(), [], chunk_size=400, chunk_overlap=80):
            count += 1
            end = chunk.end
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert end == total and count >= total // 400
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {total:,}-character line"


def test_volume_headings_of_a_structured_document_fold_as_in_text() -> None:
    """A DOCX/EPUB novel with 第N卷 as Heading 1 and 第N章 as Heading 2 took the volumes as its
    chapters (the shallowest repeated level): chapter 2 was volume 2, and no chapter had the 章's
    numbers. The 章 are its chapters now, each volume's heading starting the chapter after it, the
    same chapters the text scanner finds in the same text."""
    from kb.loaders.document import Heading, chapters_from_headings

    text = "第一卷 风起\n第一章 开始\n正文一。\n第二章 继续\n正文二。\n第二卷 云涌\n第三章 再起\n正文三。\n"
    headings = tuple(
        Heading(text.index(title), 1 if "卷" in title else 2, title, text.index(title))
        for title in ("第一卷 风起", "第一章 开始", "第二章 继续", "第二卷 云涌", "第三章 再起")
    )
    structured = chapters_from_headings(headings, length=len(text))
    assert [(c.number, c.title, c.start, c.end) for c in structured] == [
        (c.number, c.title, c.start, c.end) for c in split_chapters(text)]
    assert [c.number for c in structured] == [1, 2, 3] and structured[0].start == 0
    only_volumes = tuple(h for h in headings if h.level == 1)
    assert [c.title for c in chapters_from_headings(only_volumes, length=len(text))] == ["风起", "云涌"]


def test_unnumbered_sections_of_a_numbered_book(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bug: a web novel's 番外 after its last chapter was cited and summarized as that chapter (and
    楔子 before 第一章 as the preamble). 序章/楔子/番外N/尾声/后记 lines are sections without a chapter
    number, cited by their heading; chapter ranges skip them; a text with none of 第N章 gets no
    chapters from them."""
    from chains.summarize import documents_from_text
    from tests.helpers import ingest_hits

    text = "楔子 缘起\n很久以前。\n第一章 开始\n正文一。\n第二章 继续\n正文二。\n番外一 重逢\n番外的故事。\n后记\n感谢读者。\n"
    chapters = split_chapters(text)
    assert [(c.number, c.heading, c.title) for c in chapters] == [
        (None, "楔子", "缘起"), (1, "第一章", "开始"), (2, "第二章", "继续"), (None, "番外一", "重逢"), (None, "后记", "后记")]
    assert streamed(in_blocks(text, list(range(0, len(text), 5))), chunk_size=400, chunk_overlap=80)[0] == chapters
    assert [d.metadata["chapter"] for d in documents_from_text(text, source="a.txt", chapters="1-2")] == [1, 2]
    assert split_chapters("一些文字。\n后记\n感谢。\n") == []
    path = tmp_path / "novel.txt"
    path.write_text(text, encoding="utf-8")
    hit = ingest_hits([path], "番外的故事", root=tmp_path / "kbs", capsys=capsys)[0]
    assert (hit["chapter"], hit["section"]) == (None, "番外一 重逢")


def test_a_parts_heading_is_no_text_of_the_chapter_before() -> None:
    """Bug guarded: 上卷/下卷 lines were no headings, so 下卷 (and any words under it) were read as the
    end of 上卷's last chapter; they are unnumbered sections, as 楔子 and 后记 are."""
    text = "上卷 少年\n第一章 出山\n一。\n第二章 学艺\n二。\n下卷 归来\n第一章 重返\n三。\n"
    sections = [(c.number, c.title) for c in split_chapters(text)]
    assert sections == [(None, "少年"), (1, "出山"), (2, "学艺"), (None, "归来"), (1, "重返")]
    assert "下卷" not in text[split_chapters(text)[2].start:split_chapters(text)[2].end]
