"""Download sites' repeated lines in .txt novels (kb.loaders.site_lines): left out of the text,
its headings and its chunks; a book's own lines, and a source named once, kept."""

from __future__ import annotations

from pathlib import Path

import pytest

from kb.loaders import open_document
from kb.loaders.site_lines import find_site_lines, site_key, without_site_lines
from tests.fixtures.corpus import corpus_file
from tests.helpers import ingest_hits

SITE_LINES = (
    "天才一秒记住本站地址：www.biquge{n}.com 最快更新！",
    "本章未完，请点击下一页继续阅读",
    "手机用户请浏览 m . b i q u g e . c c 阅读，更优质的阅读体验。",
    "https://www.xbiquge.la/{n}/{n}{n}.html",
)


def site_novel(chapters: int = 6) -> tuple[str, str]:
    """A novel saved from a download site, and the same novel without the site's lines."""
    clean, saved = [], ["本书来自 www.zxcs.me 整理\n"]
    for n in range(1, chapters + 1):
        body = f"第{n}章 风起\n　　张三在第{n}章里拔剑而起。\n" + "".join(f"　　李四说：“好剑{i}！”\n" for i in range(10))
        clean.append(body)
        heading, *lines = body.splitlines(keepends=True)
        ads = [line.format(n=n) + "\n" for line in SITE_LINES]
        saved.append(heading + ads[0] + "".join(lines) + "".join(ads[1:]))
    return "本书来自 www.zxcs.me 整理\n" + "".join(clean), "".join(saved)


def test_site_lines_are_left_out_and_everything_else_kept(tmp_path: Path) -> None:
    clean, saved = site_novel()
    path = tmp_path / "novel.txt"
    path.write_text(saved, encoding="utf-8")
    document = open_document(path)
    assert "".join(document.blocks()) == clean  # the source named once stays
    assert any(
        "dropped 24 repeated download-site lines (such as '天才一秒记住本站地址：www.biquge1.com 最快更新！')" in w
        for w in document.warnings
    )


def test_a_book_without_site_lines_is_read_unchanged(tmp_path: Path) -> None:
    """The real novels have no site lines: not one line of them is dropped."""
    for name in ("sanguo.txt", "xiyouji.txt"):
        source = corpus_file(name)
        assert not find_site_lines([source.read_text(encoding="utf-8")])
    path = tmp_path / "manual.txt"
    text = "支持网站：www.example.com\n" * 2 + "第1章 安装\n请访问 https://example.com/help 获取帮助。" * 2
    path.write_text(text, encoding="utf-8")
    assert "".join(open_document(path).blocks()) == text


def test_chapter_headings_that_carry_an_address_stay(tmp_path: Path) -> None:
    text = "".join(f"第{n}章 风起 www.biquge.com\n正文{n}。\n" for n in range(1, 5))
    assert not find_site_lines([text])


@pytest.mark.parametrize("block", [1, 7, 50, 1 << 20])
def test_blocks_of_any_size_give_the_same_text(block: int) -> None:
    """Lines cut across block boundaries are still whole lines (and long lines pass in pieces)."""
    clean, saved = site_novel(4)
    saved += "长" * 5000 + "www.biquge.com\n" + "本章未完，请点击下一页继续阅读"
    clean += "长" * 5000 + "www.biquge.com\n"
    pieces = [saved[i : i + block] for i in range(0, len(saved), block)]
    site_lines = find_site_lines(pieces)
    assert "".join(without_site_lines(lambda: iter(pieces), site_lines)()) == clean


def test_a_long_lines_tail_is_never_taken_for_a_site_line() -> None:
    """The rest of an over-long line, after its held head was passed on, is not a line of its own."""
    tail = "www.biquge.com\n"
    text = ("长" * 2000 + tail) * 5
    pieces = [text[i : i + 1000] for i in range(0, len(text), 1000)]
    assert not find_site_lines(pieces)


def test_site_keys_fold_spaces_and_numbers() -> None:
    assert site_key("https://www.x.la/12/345.html") == site_key("https://www.x.la/9/8.html")
    assert site_key("　　本章未完，请点击下一页继续阅读  ") == "本章未完，请点击下一页继续阅读"
    assert site_key("m.biquge.cc阅读") == "m.biquge.cc阅读"  # an address right before Chinese
    assert site_key("Visit a.meeting room") is None
    assert site_key("李四说：“好剑！”") is None
    assert site_key("很长的一段话" * 30 + "www.x.com") is None


def test_search_never_finds_the_site(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Bug: every chapter's chunks held the site's address, so asking for it matched them all."""
    _, saved = site_novel()
    path = tmp_path / "novel.txt"
    path.write_text(saved, encoding="utf-8")
    hits = ingest_hits([path], "最快更新 本站地址", root=tmp_path / "kbs", capsys=capsys)
    assert all("本站地址" not in hit["text"] for hit in hits)
    hits = ingest_hits([path], "拔剑", root=tmp_path / "kbs2", capsys=capsys)
    assert hits and all(hit["chapter"] for hit in hits)


def test_a_list_of_links_is_kept_whole(tmp_path: Path) -> None:
    """A saved list of links (each line an address that differs only in its numbers) is its own
    text, not a site's noise: nothing is dropped when marked lines would be a third of the file."""
    text = "收藏夹\n" + "".join(f"https://www.zhihu.com/question/{n}\n" for n in range(1, 40)) + "完。\n"
    path = tmp_path / "links.txt"
    path.write_text(text, encoding="utf-8")
    document = open_document(path)
    assert "".join(document.blocks()) == text and not document.warnings


def test_an_epub_or_docx_made_from_a_site_novel_loses_the_same_lines(tmp_path: Path) -> None:
    """Prose formats go through the same filter (``drop_site_lines``), with their headings moved
    to the text that is left: the same text, headings and chapters as the book without the lines.
    Tables are data and keep such rows."""
    from tests.fixtures.documents import SourceChapter, write_docx, write_epub

    def chapters(with_site: bool) -> list[SourceChapter]:
        ads = [line.format(n=1) for line in SITE_LINES] if with_site else []
        prose = [f"李四说：“好剑{i}！”" for i in range(10)]
        return [SourceChapter(f"第{n}章 风起", [*ads[:2], f"张三在第{n}章里拔剑而起。", *ads[2:], *prose])
                for n in range(1, 5)]

    for write, suffix in ((write_epub, ".epub"), (write_docx, ".docx")):
        plain = open_document(write(tmp_path / f"plain{suffix}", chapters(False)))
        saved = open_document(write(tmp_path / f"saved{suffix}", chapters(True)))
        text = "".join(saved.blocks())
        assert text == "".join(plain.blocks()), suffix
        assert saved.headings == plain.headings
        assert [text[h.start : h.start + len(h.title)] for h in saved.headings] == [h.title for h in saved.headings]
        assert any("dropped 16 repeated download-site lines" in w for w in saved.warnings)
    table = tmp_path / "links.csv"
    table.write_text("名称,地址\n" + "".join(f"书{n},本站地址 www.biquge.com\n" for n in range(5)) + "".join(
        f"书{n},正常\n" for n in range(20)), encoding="utf-8")
    assert "本站地址" in "".join(open_document(table).blocks())


def test_offsets_move_with_the_dropped_lines() -> None:
    from kb.loaders.site_lines import _Shift

    shift = _Shift([(10, 5), (20, 3)])  # text 0-9 kept, 10-14 dropped, 15-19 kept, 20-22 dropped
    assert [shift(o) for o in (0, 9, 10, 12, 15, 19, 20, 22, 23, 30)] == [0, 9, 10, 10, 10, 14, 15, 15, 15, 22]
