"""Every document a knowledge base reads, behind one call: :func:`open_document`.

The format is chosen by the file's bytes (:func:`detect_format`), never by its name (one
exception: text named ``.csv``/``.tsv`` is a table, as bytes cannot tell a table from prose);
each format has its own module (text/Markdown, CSV/TSV, PDF, images by OCR, DOCX, PPTX, XLSX,
EPUB, HTML, RTF, XLS, DOC) and all of them return a :class:`LoadedDocument`: the text in blocks plus
headings and pages.
"""

from __future__ import annotations

import os
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, Place
from kb.loaders.ocr import OCR_MODES, check_ocr_mode
from kb.loaders.sniff import (
    DELIMITED_SUFFIXES,
    FORMATS,
    SUFFIX_FORMATS,
    SUPPORTED_SUFFIXES,
    TEXT_SUFFIXES,
    detect_format,
)

__all__ = [
    "DELIMITED_SUFFIXES",
    "FORMATS",
    "OCR_MODES",
    "SUFFIX_FORMATS",
    "SUPPORTED_SUFFIXES",
    "TEXT_SUFFIXES",
    "Heading",
    "LoadedDocument",
    "Place",
    "detect_format",
    "open_document",
]


def open_document(path: str | os.PathLike[str], *, ocr: str = "auto") -> LoadedDocument:
    """Read ``path`` in whatever supported format its bytes are; ``ocr`` (off/auto/force) says
    whether scanned pages and images are read by OCR. DocumentLoadError (one line) for files
    that are missing, empty, damaged, encrypted, hostile or of no supported format."""
    check_ocr_mode(ocr)
    file = Path(path)
    if not file.exists():
        raise DocumentLoadError(f"file not found: {file}")
    if file.is_dir():
        raise DocumentLoadError(f"{file} is a folder; give the documents inside it (e.g. {file}/*.pdf)")
    try:
        kind = detect_format(file)
    except OSError as e:
        raise DocumentLoadError(f"cannot read {file}: {e.strerror or e}") from e
    if kind == "pdf":
        from kb.loaders.pdf import load_pdf

        return load_pdf(file, ocr=ocr)
    if kind == "image":
        from kb.loaders.ocr import load_image

        return load_image(file, ocr=ocr)
    if kind == "docx":
        from kb.loaders.docx import load_docx

        return load_docx(file)
    if kind == "pptx":
        from kb.loaders.pptx import load_pptx

        return load_pptx(file)
    if kind == "xlsx":
        from kb.loaders.xlsx import load_xlsx

        return load_xlsx(file)
    if kind == "epub":
        from kb.loaders.epub import load_epub

        return load_epub(file)
    if kind == "html":
        from kb.loaders.html import load_html

        return load_html(file)
    if kind == "doc":
        from kb.loaders.doc import load_doc

        return load_doc(file)
    if kind == "xls":
        from kb.loaders.xls import load_xls

        return load_xls(file)
    if kind == "rtf":
        from kb.loaders.rtf import load_rtf

        return load_rtf(file)
    if file.suffix.lower() in DELIMITED_SUFFIXES:
        from kb.loaders.delimited import load_delimited

        return load_delimited(file)
    from kb.loaders.text import load_text_document

    return load_text_document(file)
