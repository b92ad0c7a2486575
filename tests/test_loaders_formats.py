"""The same chapters as .txt, .pdf, .docx, .epub and .html: the formats must not change what is
found (chapters, BM25 top-1 chunk), and every chunk cites the page and heading it comes from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kb import KnowledgeBase
from kb.citation import chapter_label, page_label, source_label
from kb.errors import DocumentLoadError
from kb.loaders import SUPPORTED_SUFFIXES, detect_format, open_document
from kb.splitting import split_chapters
from tests.fixtures.corpus import sanguo_path  # noqa: F401  (fixture)
from tests.fixtures.documents import (
    chapters_text,
    novel_chapters,
    write_docx,
    write_epub,
    write_html,
    write_pdf,
    write_txt,
)

QA_FILE = Path(__file__).parent / "data" / "sanguo_qa.jsonl"
FIRST, LAST = 1, 5


def squeeze(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.fixture(scope="module")
def chapters(sanguo_path: Path):  # noqa: F811
    return novel_chapters(sanguo_path.read_text(encoding="utf-8"), FIRST, LAST)


@pytest.fixture(scope="module")
def documents(chapters, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    paths = {
        "txt": write_txt(folder / "sanguo.txt", chapters),
        "docx": write_docx(folder / "sanguo.docx", chapters, title="三国演义"),
        "epub": write_epub(folder / "sanguo.epub", chapters),
        "epub2": write_epub(folder / "sanguo2.epub", chapters, toc="ncx"),
        "html": write_html(folder / "sanguo.html", chapters),
        "pdf": folder / "sanguo.pdf",
    }
    write_pdf(paths["pdf"], chapters)
    return paths


def numbered_chapters(path: Path) -> list[tuple[int | None, str | None, str | None]]:
    document = open_document(path)
    text = "".join(document.blocks())
    found = document.chapters(length=len(text))
    found = split_chapters(text) if found is None else found
    return [(c.number, c.title, c.heading) for c in found if c.number is not None]


def test_every_format_gives_the_same_chapters(documents: dict[str, Path]) -> None:
    expected = numbered_chapters(documents["txt"])
    assert [number for number, _, _ in expected] == list(range(FIRST, LAST + 1))
    for kind, path in documents.items():
        assert numbered_chapters(path) == expected, kind


def test_every_format_gives_the_source_text(documents: dict[str, Path], chapters) -> None:
    source = squeeze(chapters_text(chapters))
    for kind, path in documents.items():
        text = squeeze("".join(open_document(path).blocks()))
        assert text.endswith(source), kind  # the HTML/DOCX title comes first
        assert len(text) - len(source) <= len("三国演义"), kind


def test_format_is_chosen_by_content_not_name(documents: dict[str, Path], tmp_path: Path) -> None:
    expected = {"txt": "text", "pdf": "pdf", "docx": "docx", "epub": "epub", "epub2": "epub", "html": "html"}
    for kind, path in documents.items():
        renamed = tmp_path / f"{kind}.bin"
        renamed.write_bytes(path.read_bytes())
        assert detect_format(renamed) == expected[kind]
    zip_as_pdf = tmp_path / "manual.pdf"
    zip_as_pdf.write_bytes(documents["docx"].read_bytes())
    assert open_document(zip_as_pdf).format == "docx"
    assert {".pdf", ".docx", ".epub", ".html", ".png", ".txt", ".md"} <= set(SUPPORTED_SUFFIXES)


@pytest.fixture(scope="module")
def qa_items(chapters) -> list[dict]:
    text = chapters_text(chapters)
    items = [json.loads(line) for line in QA_FILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    inside = [item for item in items if item["evidence"] in text]
    assert len(inside) >= 3
    return inside


def test_every_format_finds_the_same_top_chunk(documents: dict[str, Path], qa_items, tmp_path: Path) -> None:
    """BM25 top-1 chunk text (whitespace-normalised) of each QA question is the same in every format."""
    top: dict[str, list[str]] = {}
    for kind, path in documents.items():
        kb = KnowledgeBase(tmp_path, f"kb_{kind}", create=True, embedding_model="none")
        kb.add_files([path])
        top[kind] = [squeeze(kb.search(item["q"], k=1, mode="bm25")[0].page_content) for item in qa_items]
        kb.close()
    for kind, texts in top.items():
        assert texts == top["txt"], kind
    # Not a retrieval-quality test, but the questions must hit their evidence sometimes to mean anything.
    assert sum(squeeze(item["evidence"]) in text for item, text in zip(qa_items, top["txt"])) >= 2


def test_pdf_chunks_carry_page_section_and_label(documents: dict[str, Path], chapters, tmp_path: Path) -> None:
    pages = write_pdf(tmp_path / "cited.pdf", chapters)
    kb = KnowledgeBase(tmp_path, "cited", create=True, embedding_model="none")
    kb.add_files([tmp_path / "cited.pdf"])
    chunks = kb.get_chunks("cited.pdf")
    assert len({c.metadata["page"] for c in chunks}) == len(pages)
    document_text = kb.get_document_text("cited.pdf")
    for chunk in chunks:
        meta = chunk.metadata
        assert document_text[meta["start"] : meta["end"]] == chunk.page_content
        last = meta["page_end"] or meta["page"]
        assert meta["page"] <= last <= len(pages)
        assert meta["section"].startswith("第") and meta["chapter"] in range(FIRST, LAST + 1)
        label = source_label(meta)
        assert label == f"cited.pdf · {page_label(meta['page'], meta['page_end'])} · {meta['section']}"
    kb.close()


def test_every_chunks_first_character_lies_on_its_page(documents: dict[str, Path], chapters, tmp_path: Path) -> None:
    """Exactly: the page whose extracted text contains the chunk's first character."""
    pages = write_pdf(tmp_path / "exact.pdf", chapters)
    document = open_document(tmp_path / "exact.pdf")
    text = "".join(document.blocks())
    starts = document.page_starts + (len(text),)
    assert len(document.page_starts) == len(pages)
    for number, page in enumerate(pages, 1):
        page_text = text[starts[number - 1] : starts[number]]
        assert squeeze(page_text) == squeeze(page), number
    kb = KnowledgeBase(tmp_path, "exact", create=True, embedding_model="none")
    kb.add_files([tmp_path / "exact.pdf"])
    for chunk in kb.get_chunks("exact.pdf"):
        start, page = chunk.metadata["start"], chunk.metadata["page"]
        assert starts[page - 1] <= start < starts[page]
        last = chunk.metadata["page_end"] or page  # and its last character lies on page_end
        assert starts[last - 1] <= chunk.metadata["end"] - 1 < starts[last]
    kb.close()


def test_pdf_headers_footers_and_page_numbers_are_dropped(documents: dict[str, Path]) -> None:
    text = "".join(open_document(documents["pdf"]).blocks())
    assert "三国演义" not in text and "- 3 -" not in text
    assert "\n" not in text.split("\n", 1)[0]  # the heading is a line of its own


def test_docx_tables_are_rows_and_headings_are_sections(chapters, tmp_path: Path) -> None:
    path = write_docx(tmp_path / "t.docx", chapters[:2], table=[["人物", "兵器"], ["关羽", "青龙偃月刀"]])
    document = open_document(path)
    text = "".join(document.blocks())
    assert "人物 | 兵器\n关羽 | 青龙偃月刀\n" in text
    assert [h.title for h in document.headings] == [c.heading for c in chapters[:2]]


def test_html_keeps_the_main_text_only(documents: dict[str, Path]) -> None:
    text = "".join(open_document(documents["html"]).blocks())
    for noise in ("第九十九回", "首页", "版权所有", "margin"):
        assert noise not in text


def test_markdown_headings_are_sections_with_their_own_text(tmp_path: Path) -> None:
    """Issue 18 item 10: ``## 第二章 休假`` is labelled 第2章 (its own unit), never 第2回."""
    path = tmp_path / "notes.md"
    path.write_text("# 手册\n\n前言。\n\n## 第一章 安装\n\n### 1.1 下载\n\n下载它。\n\n## 第二章 休假\n\n```\n# 代码\n```\n休假。\n", encoding="utf-8")
    document = open_document(path)
    assert document.format == "markdown"
    assert [(h.level, h.title) for h in document.headings] == [(1, "手册"), (2, "第一章 安装"), (3, "1.1 下载"), (2, "第二章 休假")]
    kb = KnowledgeBase(tmp_path, "md", create=True, embedding_model="none")
    kb.add_files([path])
    hit = kb.search("下载", k=1, mode="bm25")[0].metadata
    assert hit["section"] == "手册 > 第一章 安装 > 1.1 下载"
    assert source_label(hit) == "notes.md · 1.1 下载"
    assert [c.heading for c in kb.get_chapters("notes.md") if c.number] == ["第一章", "第二章"]
    kb.close()


def test_chapter_labels_keep_the_documents_unit(tmp_path: Path) -> None:
    assert chapter_label(2, "休假", "第二章") == "第2章 休假"
    assert chapter_label(12, "第十二回", "第十二回") == "第12回"
    assert chapter_label(3, "3.2 安装", None) == "3.2 安装"
    path = tmp_path / "novel.txt"
    path.write_text("第一章 开始\n从前有座山。\n第二章 休假\n山里有座庙。\n", encoding="utf-8")
    kb = KnowledgeBase(tmp_path, "units", create=True, embedding_model="none")
    kb.add_files([path])
    hit = kb.search("庙", k=1, mode="bm25")[0].metadata
    assert hit["section"] == "第2章 休假" and hit["page"] is None
    assert source_label(hit) == "novel.txt · 第2章 休假"
    kb.close()


def test_unsupported_content_is_refused_in_one_line(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "data.docx"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("hello.txt", "hi")
    with pytest.raises(DocumentLoadError, match="not a DOCX, PPTX, XLSX, OpenDocument or EPUB"):
        open_document(path)
    legacy = tmp_path / "old.doc"
    legacy.write_bytes(b"\xd0\xcf\x11\xe0" + b"\x00" * 100)
    with pytest.raises(DocumentLoadError, match="save it as .docx"):
        open_document(legacy)


def test_ingest_build_takes_every_format_and_query_cites_pages(
    documents: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ingest.cli import main

    files = [str(documents[kind]) for kind in ("pdf", "epub", "docx", "html")]
    root = str(tmp_path / "kbs")
    assert main(["build", *files, "--kb", "books", "--kb-root", root, "--embedding", "none", "--ocr", "off", "-q"]) == 0
    assert "4 added" in capsys.readouterr().out
    assert main(["query", "桃园 结义", "--kb", "books", "--kb-root", root, "--mode", "bm25", "-k", "8"]) == 0
    out = capsys.readouterr().out
    assert "sanguo.pdf · p." in out and "sanguo.epub · 第一回 宴桃园豪杰三结义 斩黄巾英雄首立功" in out
    assert main(["query", "桃园", "--kb", "books", "--kb-root", root, "--mode", "bm25", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert any(hit["page"] for hit in hits) and all(hit["section"] for hit in hits)


def test_qa_sources_and_ui_cards_cite_page_and_section() -> None:
    """The QA chain's sources (API, UI) use the same label: page and innermost heading, the
    document's own unit (issue 18 item 10), old chunks without a section as before."""
    from app.web.render import chapter_label as card_label
    from chains.events import Source

    pdf = Source(text="x", source="/srv/manual.pdf", chapter=3, chapter_title="安装", page=12,
                 section="第三章 安装 > 3.2 下载", start=5, end=9)
    assert pdf.label() == "manual.pdf · p.12 · 3.2 下载 · 5–9"
    assert card_label(pdf) == "p.12 · 3.2 下载"
    novel = Source(text="x", source="novel.md", chapter=2, chapter_title="休假", section="第2章 休假")
    assert novel.label() == "novel.md · 第2章 休假" and card_label(novel) == "第2章 休假"
    old = Source(text="x", source="sanguo.txt", chapter=1, chapter_title="宴桃园豪杰三结义", start=5, end=6)
    assert old.label() == "sanguo.txt · 第1回 宴桃园豪杰三结义 · 5–6"


def test_epub_sections_its_table_of_contents_leaves_out_are_headings(tmp_path: Path) -> None:
    """Regression: only the table of contents gave an EPUB's headings, and LibreOffice's EPUB
    export lists top-level headings only, so a manual's 第一节 sections (``<h3>`` in the book)
    were no headings. The book's own headings that nest under an entry now are; its chapter
    ``<h2>`` (the entry's own line) and a heading before the first entry are not added twice."""
    from tests.fixtures.documents import SourceChapter, _xhtml
    from tests.test_loaders_office import rewritten

    chapters = [SourceChapter("第一章 总则", ["总则正文。"]), SourceChapter("第二章 假期", ["假期正文。"])]
    book = write_epub(tmp_path / "plain.epub", chapters)
    body = ('<h1>员工手册</h1><h2 id="c1">第一章 总则</h2><p>总则正文。</p><h3>第一节 适用范围</h3><p>全体员工。</p>'
            "<h3>第二节 解释</h3><p>人事部解释。</p><h4>附注</h4><p>无。</p>")
    nested = rewritten(book, tmp_path / "manual.epub", "OEBPS/text/chap1.xhtml", _xhtml("第一章", body).encode())
    document = open_document(nested)
    text = "".join(document.blocks())
    assert [(h.level, h.title) for h in document.headings] == [
        (1, "第一章 总则"), (3, "第一节 适用范围"), (3, "第二节 解释"), (1, "第二章 假期")]
    assert all(text[h.start :].startswith(h.title) for h in document.headings)
    assert [(h.level, h.title) for h in open_document(book).headings] == [(1, "第一章 总则"), (1, "第二章 假期")]
