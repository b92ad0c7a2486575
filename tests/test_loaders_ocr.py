"""OCR of scanned pages (rapidocr-onnxruntime, models in its wheel): character error rate <= 5 %
against the source text, only pages without a text layer are OCRed, pages are cited.

Not marked slow: the three tests take ~9 s together on the shared 2-core machine (rendered pages of
a few lines, one small image; the engine loads once per process).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kb.loaders import open_document
from tests.fixtures.documents import SourceChapter, render_page_images, wrap, write_pdf

pytest.importorskip("rapidocr_onnxruntime")

TEXT_PAGE = SourceChapter("第一回 宴桃园豪杰三结义", ["话说天下大势，分久必合，合久必分。周末七国分争，并入于秦。"])
SCANNED = (
    "建宁二年四月望日，帝御温德殿。方升座，殿角狂风骤起。只见一条大青蛇，从梁上飞将下来，蟠于椅上。"
    "帝惊倒，左右急救入宫，百官俱奔避。须臾，蛇不见了。忽然大雷大雨，加以冰雹，落到半夜方止，坏却房屋无数。"
    "建宁四年二月，洛阳地震；又海水泛溢，沿海居民，尽被大浪卷入海中。"
)


def character_error_rate(got: str, expected: str) -> float:
    """Levenshtein distance over characters (whitespace ignored) / expected length."""
    a, b = re.sub(r"\s", "", got), re.sub(r"\s", "", expected)
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1] / len(b)


def test_scanned_page_is_read_by_ocr_and_text_page_is_not(tmp_path: Path) -> None:
    import pypdfium2 as pdfium

    write_pdf(tmp_path / "text.pdf", [TEXT_PAGE], header="")
    lines = wrap(SCANNED, len, 30)
    [image] = render_page_images([lines])
    image.convert("RGB").save(tmp_path / "scan.pdf", "PDF", resolution=150)
    mixed = pdfium.PdfDocument.new()
    for part in ("text.pdf", "scan.pdf"):
        mixed.import_pages(pdfium.PdfDocument(str(tmp_path / part)))
    mixed.save(str(tmp_path / "mixed.pdf"))

    document = open_document(tmp_path / "mixed.pdf", ocr="auto")
    text = "".join(document.blocks())
    assert len(document.page_starts) == 2
    first, second = text[: document.page_starts[1]], text[document.page_starts[1] :]
    assert re.sub(r"\s", "", first) == re.sub(r"\s", "", TEXT_PAGE.heading + TEXT_PAGE.paragraphs[0])
    rate = character_error_rate(second, SCANNED)
    print(f"\nOCR character error rate {rate:.2%} on {len(SCANNED)} characters")
    assert rate <= 0.05
    assert document.page_at(document.page_starts[1]) == 2
    # One line of a wrapped paragraph is one line of text: the OCRed lines are joined again.
    assert second.strip().count("\n") <= 3


def test_image_file_is_read_by_ocr(tmp_path: Path) -> None:
    [image] = render_page_images([["滚滚长江东逝水", "浪花淘尽英雄"]])
    image.crop((0, 0, 700, 320)).save(tmp_path / "photo.png")
    document = open_document(tmp_path / "photo.png")
    assert document.format == "image"
    assert character_error_rate("".join(document.blocks()), "滚滚长江东逝水浪花淘尽英雄") <= 0.1


FONT = Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc")


@pytest.mark.skipif(not FONT.exists(), reason="needs fonts-wqy-zenhei (installed by .ci/run)")
def test_a_text_layer_without_a_unicode_map_is_read_by_ocr(tmp_path: Path) -> None:
    """Bug guarded: a PDF whose font has no ToUnicode map has a text layer of glyph numbers
    (``\\x04\\x05ÄÅÇ``); it was stored as the document's text, silently. Such a page is read as a
    scanned one: refused with OCR off, read by OCR (the page itself renders fine) with OCR on."""
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.ttfonts import TTFont
    from reportlab.pdfgen import canvas

    from kb.errors import DocumentLoadError

    pdfmetrics.registerFont(TTFont("wqy", str(FONT), subfontIndex=0))
    mapped = tmp_path / "mapped.pdf"
    page = canvas.Canvas(str(mapped), pageCompression=0)
    page.setFont("wqy", 14)
    for row, line in enumerate(wrap(TEXT_PAGE.paragraphs[0], lambda s: 14 * len(s), 420)):
        page.drawString(60, 780 - 24 * row, line)
    page.save()
    unmapped = tmp_path / "unmapped.pdf"
    unmapped.write_bytes(mapped.read_bytes().replace(b"/ToUnicode", b"/ToUnicodX"))  # same length: offsets hold
    assert "周末七国分争" in "".join(open_document(mapped, ocr="off").blocks())
    with pytest.raises(DocumentLoadError, match="without a Unicode map.*--ocr auto"):
        open_document(unmapped, ocr="off")
    text = "".join(open_document(unmapped, ocr="auto").blocks())
    assert character_error_rate(text, TEXT_PAGE.paragraphs[0]) <= 0.05, text
