"""PowerPoint decks (.pptx) with python-pptx (MIT): every slide one page, its title a level-1
heading, the text of its shapes in reading order (top to bottom, then left to right; groups
opened), each table row one `` | ``-separated line, then the speaker notes, which often hold
the explanation the slide only hints at.

The archive is checked against zip bombs first; python-pptx parses its XML with
``resolve_entities=False``, so entity expansion never happens.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.document import LoadedDocument
from kb.loaders.slides import SlidePages
from kb.loaders.sniff import check_archive

def load_pptx(path: Path) -> LoadedDocument:
    """A .pptx deck's text, one page per slide, slide titles as headings."""
    from pptx.exc import PackageNotFoundError

    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, name=str(path))
        pages = _read_slides(_open_presentation(path).slides)
    except DocumentLoadError:
        raise
    except ValueError as e:
        raise DocumentLoadError(f"{path} is a damaged PowerPoint deck ({_reason(e)}); save it again as .pptx") from e
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, OSError) as e:
        raise DocumentLoadError(f"{path} is a damaged PowerPoint deck ({_reason(e)}); save it again as .pptx") from e
    except Exception as e:  # lxml.etree.XMLSyntaxError and friends from a malformed part
        raise DocumentLoadError(
            f"{path} is a damaged PowerPoint deck ({type(e).__name__}: {_reason(e)}); save it again as .pptx"
        ) from e
    return pages.document(path, "pptx")


def _open_presentation(path: Path):  # type: ignore[no-untyped-def]
    """The python-pptx presentation of a deck, a show (.ppsx, .ppsm) or a template (.potx, .potm):
    python-pptx's package maps all their main parts to its presentation part, but
    ``pptx.Presentation`` refuses shows and templates by content type. Macros are never run."""
    from pptx.package import Package
    from pptx.parts.presentation import PresentationPart

    part = Package.open(str(path)).main_document_part
    if not isinstance(part, PresentationPart):
        raise ValueError(f"not a PowerPoint deck: its main part is {part.content_type}")
    return part.presentation


def _read_slides(slides: Iterable) -> SlidePages:  # type: ignore[type-arg]
    """The lines of every slide (title, body, notes), the titles as headings, where slides start."""
    pages = SlidePages()
    for slide in slides:
        pages.new_slide()
        title = slide.shapes.title
        if title is not None and title.has_text_frame:
            pages.title(title.text_frame.text)
        for line in _shape_lines(slide.shapes, skip=title.shape_id if title is not None else None):
            pages.lines(line)
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame is not None:
            pages.notes(slide.notes_slide.notes_text_frame.text)
    return pages


def _shape_lines(shapes: Iterable, *, skip: int | None) -> Iterator[str]:  # type: ignore[type-arg]
    """The text of ``shapes`` (but the one with id ``skip``) in reading order: top to bottom,
    then left to right; a group's members in their own order at the group's place."""
    from pptx.shapes.group import GroupShape

    for shape in sorted(shapes, key=lambda s: (s.top or 0, s.left or 0)):
        if shape.shape_id == skip:
            continue
        if isinstance(shape, GroupShape):
            yield from _shape_lines(shape.shapes, skip=skip)
        elif shape.has_text_frame:
            yield from (paragraph.text for paragraph in shape.text_frame.paragraphs)
        elif shape.has_table:
            for row in shape.table.rows:
                cells = _row_cells(row)
                if any(cells):
                    yield " | ".join(cells)


def _row_cells(row) -> list[str]:  # type: ignore[no-untyped-def]
    """A row's cell texts, a merged cell once (python-pptx keeps the cells it spans, marked)."""
    return [" ".join(cell.text.split()) for cell in row.cells if not cell.is_spanned]


def _reason(error: Exception) -> str:
    return " ".join(str(error).split())
