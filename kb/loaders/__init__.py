"""Every document a knowledge base reads, behind one call: :func:`open_document`.

The format is chosen by the file's bytes (:func:`detect_format`), never by its name (one
exception: text named ``.csv``/``.tsv`` is a table, as bytes cannot tell a table from prose);
each format has its own module (text/Markdown, CSV/TSV, PDF, images by OCR, DOCX, PPTX, XLSX,
EPUB, MOBI/AZW3, HTML, RTF, XLS, DOC, PPT, ODT, ODS, ODP) and all of them return a
:class:`LoadedDocument`: the text in blocks plus headings and pages.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import Heading, LoadedDocument, Place
from kb.loaders.ocr import OCR_MODES, check_ocr_mode
from kb.loaders.sniff import (
    ARCHIVE_SUFFIXES,
    DELIMITED_SUFFIXES,
    FORMATS,
    SUFFIX_FORMATS,
    SUPPORTED_SUFFIXES,
    TEXT_SUFFIXES,
    check_regular_file,
    detect_format,
    is_archive,
)

__all__ = [
    "ARCHIVE_SUFFIXES",
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
    "is_archive",
    "open_document",
]


# Each format's loader, imported on first use (each pulls in its own library); text and CSV/TSV below.
_LOADERS = {
    "pdf": ("kb.loaders.pdf", "load_pdf"),
    "image": ("kb.loaders.ocr", "load_image"),
    "docx": ("kb.loaders.docx", "load_docx"),
    "doc": ("kb.loaders.doc", "load_doc"),
    "pptx": ("kb.loaders.pptx", "load_pptx"),
    "ppt": ("kb.loaders.ppt", "load_ppt"),
    "xlsx": ("kb.loaders.xlsx", "load_xlsx"),
    "xls": ("kb.loaders.xls", "load_xls"),
    "epub": ("kb.loaders.epub", "load_epub"),
    "html": ("kb.loaders.html", "load_html"),
    "rtf": ("kb.loaders.rtf", "load_rtf"),
    "odt": ("kb.loaders.odt", "load_odt"),
    "ods": ("kb.loaders.ods", "load_ods"),
    "odp": ("kb.loaders.odp", "load_odp"),
    "mobi": ("kb.loaders.mobi", "load_mobi"),
}
_OCR_FORMATS = frozenset({"pdf", "image"})  # the loaders that take ``ocr``


def open_document(path: str | os.PathLike[str], *, ocr: str = "auto") -> LoadedDocument:
    """Read ``path`` in whatever supported format its bytes are; ``ocr`` (off/auto/force) says
    whether scanned pages and images are read by OCR. A download site's repeated lines are left
    out of prose (:mod:`kb.loaders.site_lines`). DocumentLoadError (one line) for files that are
    missing, empty, damaged, encrypted, hostile or of no supported format."""
    from kb.loaders.site_lines import drop_site_lines

    return drop_site_lines(_load(path, ocr=ocr))


def _load(path: str | os.PathLike[str], *, ocr: str) -> LoadedDocument:
    check_ocr_mode(ocr)
    file = Path(path)
    if not file.exists():
        raise DocumentLoadError(f"file not found: {file}")
    if file.is_dir():
        raise DocumentLoadError(f"{file} is a folder; give the documents inside it (e.g. {file}/*.pdf)")
    check_regular_file(file)
    try:
        kind = detect_format(file)
    except OSError as e:
        raise DocumentLoadError(f"cannot read {file}: {e.strerror or e}") from e
    if kind in _LOADERS:
        module, name = _LOADERS[kind]
        load = getattr(importlib.import_module(module), name)
        return load(file, ocr=ocr) if kind in _OCR_FORMATS else load(file)
    if file.suffix.lower() in DELIMITED_SUFFIXES:
        from kb.loaders.delimited import load_delimited

        return load_delimited(file)
    from kb.loaders.text import load_text_document

    return load_text_document(file)
