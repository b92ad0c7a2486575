"""PowerPoint 97-2003 (.ppt): each slide's text and notes as a page, against the PPTX it was made
from (the PPTX loader's own reading), the live records of a fast-saved deck, and refusals.
tests/data/ppt/office.ppt was written by LibreOffice 7.4 (``soffice --headless --convert-to ppt``)
from the deck ``tests.test_loaders_office.write_pptx`` makes; ``python -m tests.test_loaders_ppt``
remakes it (needs LibreOffice Impress, which CI does not install)."""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

import pytest

from kb.loaders import SUFFIX_FORMATS, SUPPORTED_SUFFIXES, detect_format, open_document
from kb.loaders.ppt import persist_directory, slide_texts
from tests.helpers import ingest_hits, libreoffice_convert
from tests.test_loaders_hostile import refused
from tests.test_loaders_office import write_pptx

FIXTURE = Path(__file__).parent / "data" / "ppt" / "office.ppt"


def pages(document: object) -> list[list[str]]:
    """Each page's lines (a page per slide)."""
    text = "".join(document.blocks())  # type: ignore[attr-defined]
    starts = [*document.page_starts, len(text)]  # type: ignore[attr-defined]
    return [text[a:b].splitlines() for a, b in zip(starts, starts[1:], strict=False)]


def test_each_slide_is_a_page_with_the_pptx_texts(tmp_path: Path) -> None:
    """The same slides as the PPTX loader reads from the source deck, notes last with the same
    ``备注：`` label, tables as the same ``a | b`` rows (a .ppt table's cells came one per line
    before: its rows are read from the cells' places now); shapes come in drawing order rather than
    the PPTX loader's reading order. The notes page's slide-number field (a ``*`` the .ppt stores
    as text) is not read as text."""
    ppt = open_document(FIXTURE)
    pptx = open_document(write_pptx(tmp_path / "deck.pptx"))
    assert (ppt.format, detect_format(FIXTURE)) == ("ppt", "ppt")
    assert [sorted(lines) for lines in pages(ppt)] == [sorted(lines) for lines in pages(pptx)]
    assert any(" | " in line for lines in pages(ppt) for line in lines)
    notes = pages(ppt)[1]
    assert notes[-2:] == ["备注：年假可以累积到次年三月。", "讲到这里停一下。"]
    assert [h.title for h in ppt.headings] == ["员工手册", "第一章 休假制度", "部门一览", "谢谢"]
    assert ppt.page_at(ppt.headings[1].start) == 2


def test_the_current_edit_wins_over_an_older_copy() -> None:
    """A fast save appends changed slides, a persist directory listing them and a new edit that
    points back to the last one; the old copies stay in the stream. Here slide 2's container is
    appended again with 五天 -> 十天, as PowerPoint would: the new copy is read, the old one not."""
    import olefile

    with olefile.OleFileIO(str(FIXTURE)) as ole:
        stream = ole.openstream("PowerPoint Document").read()
        user = ole.openstream("Current User").read()
    current = struct.unpack_from("<I", user, 16)[0]
    before = slide_texts(stream, user)
    directory = persist_directory(stream, current)
    slide_id = next(k for k, v in directory.items() if k > 0 and "五天".encode("utf-16-le") in
                    stream[v: v + 8 + struct.unpack_from("<I", stream, v + 4)[0]])
    old = directory[slide_id]
    copy = stream[old: old + 8 + struct.unpack_from("<I", stream, old + 4)[0]]
    new_slide = len(stream)
    stream += copy.replace("五天".encode("utf-16-le"), "十天".encode("utf-16-le"))
    new_directory = len(stream)
    stream += struct.pack("<HHI", 0, 0x1772, 8) + struct.pack("<II", slide_id | (1 << 20), new_slide)
    edit = bytearray(stream[current: current + 8 + struct.unpack_from("<I", stream, current + 4)[0]])
    struct.pack_into("<II", edit, 16, current, new_directory)  # offsetLastEdit, offsetPersistDirectory
    new_edit = len(stream)
    stream += bytes(edit)
    user = user[:16] + struct.pack("<I", new_edit) + user[20:]
    after = slide_texts(stream, user)
    changed = [i for i, (a, b) in enumerate(zip(before, after, strict=True)) if a != b]
    assert len(changed) == 1 and "年假每年十天" in after[changed[0]] and "年假每年五天" in before[changed[0]]


def test_ppt_refusals(tmp_path: Path) -> None:
    data = FIXTURE.read_bytes()
    assert ".ppt" in SUPPORTED_SUFFIXES and SUFFIX_FORMATS[".ppt"] == frozenset({"ppt"})
    (tmp_path / "cut.ppt").write_bytes(data[: len(data) // 3])
    refused(tmp_path / "cut.ppt", "(damaged PowerPoint deck|Office 97-2003 file)")
    name = "Current User".encode("utf-16-le")
    (tmp_path / "userless.ppt").write_bytes(data.replace(name, "Current Usex".encode("utf-16-le")))
    refused(tmp_path / "userless.ppt", "damaged PowerPoint deck \\(no Current User stream\\)")


def test_slides_are_cited_as_pages(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    hits = ingest_hits([FIXTURE], "年假 病假", root=tmp_path / "kbs", capsys=capsys)
    hit = next(h for h in hits if "年假" in h["text"])
    assert (hit["page"], hit["section"]) == (2, "第一章 休假制度")


def make_fixture() -> None:
    """Write the PPTX source and convert it with LibreOffice into tests/data/ppt."""
    with tempfile.TemporaryDirectory() as folder:
        libreoffice_convert([write_pptx(Path(folder) / "office.pptx")], "ppt", FIXTURE.parent)


if __name__ == "__main__":
    make_fixture()
