"""PDF with pypdfium2 (Apache-2.0/BSD; not PyMuPDF, whose AGPL does not fit): the text layer page
by page, the page of every character kept, the outline (bookmarks) as chapters and sections.

Pages without a text layer are scanned pages: with ``ocr="auto"`` they are rendered and read
by OCR (:mod:`kb.loaders.ocr`), ``"force"`` reads every page that way, ``"off"`` refuses a PDF
that has no text at all and warns about the pages it skips. So are pages whose text layer cannot
be read: fonts without a Unicode map (no ToUnicode, a subset with private codes), whose "text" is
glyph numbers (``\x04\x05ÄÅÇ``), while the page renders, and reads, fine.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, text_blocks
from kb.loaders.layout import join_pages, remove_headers_and_footers
from kb.loaders.ocr import check_ocr_mode, ocr_lines

logger = logging.getLogger(__name__)

# A page with fewer non-space characters in its text layer than this is a scanned page.
MIN_TEXT_CHARS = 8
# A page whose text-layer characters pdfium cannot map to Unicode are at least this share of its
# non-space characters has no usable text layer (a font without a ToUnicode map: 84 of 202).
UNMAPPED_SHARE = 0.2
# Scanned pages are rendered at this many dots per inch for OCR.
OCR_DPI = 150
MAX_PAGES = 20_000


def load_pdf(path: Path, *, ocr: str) -> LoadedDocument:
    """A PDF's text (OCR for scanned pages as ``ocr`` says) with its pages and outline."""
    import pypdfium2 as pdfium

    check_ocr_mode(ocr)
    try:
        pdf = pdfium.PdfDocument(str(path))
    except pdfium.PdfiumError as e:
        if "password" in str(e).lower():
            raise DocumentLoadError(f"{path} is password-protected; decrypt it first (e.g. qpdf --decrypt)") from e
        raise DocumentLoadError(f"{path} is a damaged PDF ({e}); save or print it to PDF again") from e
    try:
        count = len(pdf)
        if count > MAX_PAGES:
            raise DocumentLoadError(f"{path} has {count} pages (limit {MAX_PAGES}); split it")
        pages, scanned = _read_pages(pdf, path=path, ocr=ocr)
        outline = _outline(pdf)
    finally:
        pdf.close()
    if scanned and ocr == "off":
        if len(scanned) == count:
            raise DocumentLoadError(f"{path} has only scanned pages (no text layer, or one without a Unicode map); "
                                    "run with --ocr auto to read them")
        logger.warning("%s: %d scanned page(s) skipped because OCR is off (first: p.%d)", path.name, len(scanned), scanned[0])
    pieces, starts = join_pages(remove_headers_and_footers(pages))
    if not any(piece.strip() for piece in pieces):
        raise DocumentLoadError(f"{path} has no text on any page; there is nothing to add")
    warnings = [f"{len(scanned)} scanned pages skipped (OCR off)"] if scanned and ocr == "off" else []
    headings = _place_outline(outline, pieces, starts)
    return LoadedDocument(
        path, "pdf", "pdf", text_blocks(pieces), headings=headings, page_starts=tuple(starts), warnings=warnings
    )


def _read_pages(pdf, *, path: Path, ocr: str) -> tuple[list[list[str]], list[int]]:  # type: ignore[no-untyped-def]
    """Lines of every page, and the 1-based numbers of the scanned pages (OCRed unless off)."""
    from tqdm import tqdm

    pages: list[list[str]] = []
    scanned: list[int] = []
    bar = None
    for index in range(len(pdf)):
        page = pdf[index]
        try:
            text = "" if ocr == "force" else _text_layer(page, path=path, number=index + 1)
            if ocr == "force" or len("".join(text.split())) < MIN_TEXT_CHARS:
                scanned.append(index + 1)
                if ocr != "off":
                    if bar is None:
                        bar = tqdm(total=len(pdf), initial=index, desc=f"OCR {path}", unit="page", leave=False, disable=None)
                    text = "\n".join(ocr_lines(page.render(scale=OCR_DPI / 72).to_pil()))
            pages.append([line.rstrip() for line in text.splitlines() if line.strip()])
        finally:
            page.close()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return pages, scanned


def _text_layer(page, *, path: Path, number: int) -> str:  # type: ignore[no-untyped-def]
    """The page's text layer; ``""`` where too much of it has no Unicode map (then OCR reads the page)."""
    textpage = page.get_textpage()
    try:
        text = textpage.get_text_range().replace("\r\n", "\n").replace("\r", "\n").replace("\ufffe", "")
        unmapped = _unmapped_chars(textpage)
        if unmapped and unmapped >= UNMAPPED_SHARE * len("".join(text.split())):
            logger.info("%s p.%d: %d characters of its text layer have no Unicode map; read as a scanned page",
                        path.name, number, unmapped)
            return ""
        return text
    finally:
        textpage.close()


def _unmapped_chars(textpage) -> int:  # type: ignore[no-untyped-def]
    """How many of the page's characters pdfium finds no Unicode value for (FPDFText_HasUnicodeMapError)."""
    import pypdfium2.raw as pdfium_c

    handle = textpage.raw
    count = pdfium_c.FPDFText_CountChars(handle)
    return sum(pdfium_c.FPDFText_HasUnicodeMapError(handle, i) == 1 for i in range(count))


def _outline(pdf) -> list[tuple[int, str, int]]:  # type: ignore[no-untyped-def]
    """``(level, title, page index)`` of each bookmark (levels 1-3), in order."""
    entries = []
    try:
        for item in pdf.get_toc(max_depth=3):
            title = " ".join((item.get_title() or "").split())
            dest = item.get_dest()
            page_index = dest.get_index() if dest is not None else None
            if title and page_index is not None and item.level < 3:
                entries.append((item.level + 1, title, page_index))
    except Exception as e:  # a broken outline is no reason to refuse the text
        logger.warning("ignoring a damaged PDF outline: %s", e)
    return entries


def _place_outline(outline: list[tuple[int, str, int]], pieces: list[str], starts: list[int]) -> tuple[Heading, ...]:
    """Each bookmark at the line of its page that holds its title (else the page's start)."""
    headings: list[Heading] = []
    bases = list(itertools.accumulate((len(piece) for piece in pieces), initial=0))
    for level, title, page in outline:
        if not 0 <= page < len(pieces):
            continue
        piece = pieces[page]
        found = _find_compact(piece, "".join(title.split()))
        offset = bases[page] + piece.rfind("\n", 0, found) + 1 if found >= 0 else starts[page]
        if headings and offset < headings[-1].start:
            continue
        headings.append(Heading(offset, level, title))
    return tuple(headings)


def _find_compact(piece: str, compact: str) -> int:
    """Where ``compact`` (a title without spaces) starts in ``piece`` ignoring whitespace; -1 if not."""
    head = compact[: min(len(compact), 12)]
    squeezed, positions = [], []
    for i, char in enumerate(piece):
        if not char.isspace():
            squeezed.append(char)
            positions.append(i)
    found = "".join(squeezed).find(head)
    return positions[found] if found >= 0 else -1
