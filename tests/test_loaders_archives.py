"""ZIP and tar archives of documents (资料.zip, 资料.tar.gz) and folders given to a build (kb.loaders.folders,
kb.loaders.archives): every document inside, recorded under its path inside; hostile archives
refused in one line."""

from __future__ import annotations

import json
import logging
import re
import zipfile
from pathlib import Path

import pytest

from app.errors import UserError
from app.services import Services
from configs import Settings
from ingest.cli import main
from kb.errors import DocumentLoadError
from kb.loaders import is_archive, open_document
from kb.loaders.archives import unpack_documents
from tests.fixtures.documents import SourceChapter, write_docx

LEAVE = "第一章 请假\n年假五天，病假须有医院证明。\n"


def _libarchive_loads() -> bool:
    try:
        import libarchive  # noqa: F401
    except (ImportError, OSError, AttributeError):
        return False
    return True


TRAVEL = "第一章 出差\n差旅费凭发票报销。\n"


def gbk_named_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A ZIP whose non-ASCII names are GBK bytes without the UTF-8 flag, as zip tools on Chinese
    Windows write them (zipfile itself always writes UTF-8): written under ASCII stand-ins of the
    same byte length, then the names patched in place."""
    stand_ins = {}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for number, (name, data) in enumerate(members.items()):
            raw = name.encode("gbk")
            stand_in = chr(ord("A") + number).encode() * len(raw) if not name.isascii() else raw
            stand_ins[stand_in] = raw
            archive.writestr(stand_in.decode(), data)
    content = path.read_bytes()
    for stand_in, raw in stand_ins.items():
        content = content.replace(stand_in, raw)
    path.write_bytes(content)
    return path


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    docx = write_docx(tmp_path / "travel.docx", [SourceChapter("第一章 出差", ["差旅费凭发票报销。"])])
    return gbk_named_zip(tmp_path / "资料.zip", {
        "制度/请假.txt": LEAVE.encode("gbk"),
        "制度/出差.docx": docx.read_bytes(),
        "说明.md": "# 说明\n本资料供新员工阅读。\n".encode(),
        "__MACOSX/制度/._请假.txt": b"\x00\x05\x16\x07",
        ".DS_Store": b"\x00\x00\x00\x01Bud1",
        "制度/~$出差.docx": b"lock",
        "工具/setup.exe": b"MZ",
    })


def test_an_archives_documents_are_built_each_under_its_path_inside(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ingest build 资料.zip`` used to fail: "a ZIP archive but not a DOCX...". Each document in it
    is read (GBK names from Chinese Windows decoded), recorded as 资料.zip/制度/请假.txt; Mac and
    Office leftovers are passed over; a rebuild of the same archive skips every member."""
    kb = ["--kb", "zip", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", str(archive), *kb]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("zip: files: 3 (3 added") and "1 file of other types skipped" in out
    assert "note: skipped 1 file of other types in the folders and archives given (资料.zip/工具/setup.exe)" in err
    assert main(["list", *kb[:4], "--json"]) == 0
    sources = sorted(d["source"] for d in json.loads(capsys.readouterr().out))
    assert sources == [f"{archive.resolve()}/{inside}" for inside in ("制度/出差.docx", "制度/请假.txt", "说明.md")]
    assert main(["query", "病假 证明", *kb[:4], "--mode", "bm25", "--json"]) == 0
    hit = json.loads(capsys.readouterr().out)[0]
    assert "病假须有医院证明" in hit["text"] and hit["source"].endswith("资料.zip/制度/请假.txt")
    assert main(["build", str(archive), *kb]) == 0
    assert "3 unchanged" in capsys.readouterr().out


def test_a_member_cannot_write_outside_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "evil.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("../../outside.txt", LEAVE)
        archive.writestr("/abs/root.txt", TRAVEL)
    into = tmp_path / "into"
    into.mkdir()
    found = unpack_documents(path, into)
    assert sorted(inside for _, inside in found.files) == ["abs/root.txt", "outside.txt"]
    assert all(file.parent == into for file, _ in found.files)
    assert not (tmp_path / "outside.txt").exists()


def test_hostile_and_empty_archives_are_one_line(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("big.txt", b"a" * (20 << 20))
    (tmp_path / "into").mkdir()
    with pytest.raises(DocumentLoadError, match="possible zip bomb"):
        unpack_documents(bomb, tmp_path / "into")
    empty = tmp_path / "tools.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("setup.exe", b"MZ")
    with pytest.raises(DocumentLoadError, match=r"no documents in the archive tools.zip .*1 files of other types"):
        unpack_documents(empty, tmp_path / "into")


def test_document_packages_are_not_archives(archive: Path, tmp_path: Path) -> None:
    """DOCX, EPUB... are ZIPs too and stay documents; a plain archive given where one document is
    read (a summary) says how to use it."""
    docx = write_docx(tmp_path / "a.docx", [SourceChapter("第一章 甲", ["乙。"])])
    assert is_archive(archive) and not is_archive(docx) and not is_archive(tmp_path / "missing.zip")
    with pytest.raises(DocumentLoadError, match="ZIP archive of files.*build it into a knowledge base"):
        open_document(archive)


def test_the_upload_takes_an_archive_for_a_build_only(archive: Path, tmp_path: Path) -> None:
    from app.uploads import check_content

    services = Services(Settings(kb_root=tmp_path / "kbs"))
    assert ".zip" in services.upload_types(archives=True) and ".zip" not in services.upload_types()
    assert check_content(services.check_upload(archive, archives=True)) == archive
    with pytest.raises(UserError, match="file type not allowed"):
        services.check_upload(archive)  # the summary tab
    services.create_kb("up", embedding_model="none")
    report = services.add_files("up", [archive])
    assert sorted(report.added) == ["资料.zip/制度/出差.docx", "资料.zip/制度/请假.txt", "资料.zip/说明.md"]
    assert report.summary().endswith("; 1 file of other types skipped")  # the page's status line


def test_removing_an_archive_or_folder_removes_what_was_built_from_it(
    archive: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kb = ["--kb", "zip", "--kb-root", str(tmp_path / "kbs")]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text(LEAVE, encoding="utf-8")
    (folder / "b.txt").write_text(TRAVEL, encoding="utf-8")
    assert main(["build", str(archive), str(folder), *kb, "--embedding", "none", "-q"]) == 0
    assert "files: 5 (5 added" in capsys.readouterr().out
    assert main(["remove", str(archive), *kb]) == 0
    assert "3 removed" in capsys.readouterr().out
    assert main(["remove", str(folder), *kb]) == 0
    assert "2 removed" in capsys.readouterr().out
    assert main(["remove", str(folder), *kb]) != 0  # nothing left under it: one line, as for a file


def write_tar(path: Path, members: dict[str, bytes], *, mode: str = "w:gz") -> Path:
    """A tar archive of ``members`` (name -> bytes); a name given as bytes-in-str via
    surrogateescape keeps its raw (e.g. GBK) bytes, as tar on a Chinese Windows machine writes."""
    import io
    import tarfile

    with tarfile.open(path, mode, encoding="utf-8", errors="surrogateescape") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix, mode", [(".tar.gz", "w:gz"), (".tgz", "w:gz"), (".tar", "w"),
                                          (".tar.bz2", "w:bz2"), (".tar.xz", "w:xz")])
def test_a_tar_archives_documents_are_built_each_under_its_path_inside(
    suffix: str, mode: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ingest build 资料.tar.gz`` used to say "a gzip archive: unpack it and give the folder".
    A tar archive, plain or compressed, is read as a ZIP is: each document under its path inside
    (a GBK name decoded), links and leftovers passed over, other types named; a rebuild skips
    every member and ``ingest remove`` of the archive removes them."""
    import tarfile

    path = write_tar(tmp_path / f"资料{suffix}", {
        "制度/请假.txt": LEAVE.encode("gbk"),
        "制度/出差.txt".encode("gbk").decode("utf-8", "surrogateescape"): TRAVEL.encode(),
        "./说明.md": "# 说明\n本资料供新员工阅读。\n".encode(),
        "制度/._请假.txt": b"\x00\x05\x16\x07",
        "工具/setup.exe": b"MZ",
    }, mode=mode)
    assert is_archive(path) and tarfile.is_tarfile(path)
    kb = ["--kb", "tar", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", str(path), *kb]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("tar: files: 3 (3 added") and f"(资料{suffix}/工具/setup.exe)" in err
    assert main(["list", *kb[:4], "--json"]) == 0
    sources = sorted(d["source"] for d in json.loads(capsys.readouterr().out))
    assert sources == [f"{path.resolve()}/{inside}" for inside in ("制度/出差.txt", "制度/请假.txt", "说明.md")]
    assert main(["build", str(path), *kb]) == 0
    assert "3 unchanged" in capsys.readouterr().out
    assert main(["remove", str(path), *kb[:4]]) == 0
    assert "3 removed" in capsys.readouterr().out


def test_hostile_tar_archives_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the size or member limits (checked as the compressed stream reaches each member,
    before it is unpacked), cut short, a link out of the folder, a gzipped file that is no tar:
    each refused or passed over in one line, nothing written outside the folder."""
    import io
    import tarfile

    import kb.loaders.sniff as sniff

    into = tmp_path / "into"
    into.mkdir()
    big = write_tar(tmp_path / "big.tar.gz", {"a.txt": LEAVE.encode(), "b.txt": b"a" * 4096})
    monkeypatch.setattr(sniff, "MAX_UNPACKED_BYTES", 1024)
    bomb = r"big.tar.gz would unpack to over 0 MiB \(limit 0 MiB\); refused as a possible zip bomb"
    with pytest.raises(DocumentLoadError, match=bomb):
        unpack_documents(big, into)
    monkeypatch.undo()
    many = write_tar(tmp_path / "many.tar", {f"{n}.txt": LEAVE.encode() for n in range(5)}, mode="w")
    monkeypatch.setattr(sniff, "MAX_MEMBERS", 3)
    with pytest.raises(DocumentLoadError, match="many.tar holds over 3 files"):
        unpack_documents(many, into)
    monkeypatch.undo()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(big.read_bytes()[:60])
    with pytest.raises(DocumentLoadError, match="cut.tar.gz is a damaged tar archive"):
        unpack_documents(cut, into)
    links = tmp_path / "links.tar"
    with tarfile.open(links, "w") as archive:
        archive.addfile(tarfile.TarInfo("../../escape.txt"), io.BytesIO(b""))
        link = tarfile.TarInfo("passwd.txt")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        archive.addfile(link)
        info = tarfile.TarInfo("ok.txt")
        info.size = len(LEAVE.encode())
        archive.addfile(info, io.BytesIO(LEAVE.encode()))
    found = unpack_documents(links, into)
    assert [inside for _, inside in found.files] == ["escape.txt", "ok.txt"]  # the link passed over
    assert all(file.parent == into for file, _ in found.files) and not (tmp_path / "escape.txt").exists()
    import gzip
    import lzma

    single = tmp_path / "novel.txt.gz"
    single.write_bytes(gzip.compress(LEAVE.encode()))
    assert not is_archive(single)
    with pytest.raises(DocumentLoadError, match="novel.txt.gz is a gzip-compressed file, not a document: unpack it"):
        open_document(single)
    (tmp_path / "novel.txt.xz").write_bytes(lzma.compress(LEAVE.encode()))
    with pytest.raises(DocumentLoadError, match="novel.txt.xz is an xz-compressed file, not a document"):
        open_document(tmp_path / "novel.txt.xz")
    for archive in (big, many):  # where one document is read (a summary): what to do with it
        with pytest.raises(DocumentLoadError, match="is a tar archive of files, not a document: build it into a kno"):
            open_document(archive)


def test_the_upload_takes_a_tar_archive_for_a_build(tmp_path: Path) -> None:
    """The build's upload accepts .tar/.tgz/.tar.gz/.tar.bz2/.tar.xz and adds each document; a
    gzipped file that is no tar is refused at upload in one line."""
    import gzip

    from app.uploads import check_content

    services = Services(Settings(kb_root=tmp_path / "kbs"))
    assert {".tar", ".tgz", ".gz", ".bz2", ".xz"} <= set(services.upload_types(archives=True))
    path = write_tar(tmp_path / "资料.tar.gz", {"制度/请假.txt": LEAVE.encode(), "说明.md": "# 说明\n".encode()})
    assert check_content(services.check_upload(path, archives=True)) == path
    services.create_kb("up", embedding_model="none")
    assert sorted(services.add_files("up", [path]).added) == ["资料.tar.gz/制度/请假.txt", "资料.tar.gz/说明.md"]
    single = tmp_path / "novel.txt.gz"
    single.write_bytes(gzip.compress(LEAVE.encode()))
    with pytest.raises(UserError, match="gzip"):
        check_content(services.check_upload(single, archives=True))


def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def _refused_alone_and_named_inside(tmp_path: Path, archive: Path, match: str) -> str:
    """Check ``archive`` is refused in one line (``match``) when given, and skipped inside a ZIP
    beside a document that still builds; the line naming it there."""
    (tmp_path / "alone").mkdir()
    with pytest.raises(DocumentLoadError, match=match):
        unpack_documents(archive, tmp_path / "alone")
    outer = _zip(tmp_path / "outer.zip", {archive.name: archive.read_bytes(), "b.txt": TRAVEL.encode()})
    (tmp_path / "inside").mkdir()
    found = unpack_documents(outer, tmp_path / "inside")
    assert [inside for _, inside in found.files] == ["b.txt"]
    (unread,) = found.unread
    return unread


def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def test_archives_inside_an_archive_are_built_each_document_under_its_inner_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ZIP holding 2023.zip and 2024.tar.gz (as a year's folders are often sent) used to build
    only its loose files and skip the inner archives as "files of other types". Their documents
    are built now, recorded under the inner archive's path, and removing the outer archive
    removes them all."""
    inner_zip = _zip(tmp_path / "2023.zip", {"制度/请假.txt": LEAVE.encode()})
    inner_tar = _tar_gz(tmp_path / "2024.tar.gz", {"制度/出差.txt": TRAVEL.encode()})
    outer = _zip(tmp_path / "资料.zip", {
        "2023.zip": inner_zip.read_bytes(), "归档/2024.tar.gz": inner_tar.read_bytes(),
        "说明.md": "# 说明\n新员工阅读。\n".encode(), "小说.txt.gz": b"\x1f\x8b\x08\x00",
    })
    kb = ["--kb", "nested", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", str(outer), *kb]) == 0
    assert "资料.zip/小说.txt.gz" in capsys.readouterr().err  # a gzipped file is not an archive: named, skipped
    assert main(["list", *kb[:4], "--json"]) == 0
    sources = sorted(d["source"] for d in json.loads(capsys.readouterr().out))
    assert sources == [f"{outer.resolve()}/{inside}" for inside in ("2023.zip/制度/请假.txt",
                                                                   "归档/2024.tar.gz/制度/出差.txt", "说明.md")]
    assert main(["query", "差旅费", *kb[:4], "--mode", "bm25", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["source"].endswith("资料.zip/归档/2024.tar.gz/制度/出差.txt")
    assert main(["remove", str(outer), *kb[:4]]) == 0
    capsys.readouterr()
    assert main(["list", *kb[:4], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_nesting_is_bounded_and_a_damaged_inner_archive_is_skipped_and_named(tmp_path: Path) -> None:
    """Five archives each inside the next: the documents of the first three levels below the one
    given are read, the deeper archive is named as nested too deep. A damaged inner archive is
    named with why, and the other documents are still unpacked."""
    from kb.loaders.archives import MAX_NESTING

    assert MAX_NESTING == 3
    data = _zip(tmp_path / "l4.zip", {"d4.txt": b"level 4"}).read_bytes()
    for level in (3, 2, 1):
        data = _zip(tmp_path / f"l{level}.zip", {f"d{level}.txt": f"level {level}".encode(),
                                                 f"l{level + 1}.zip": data}).read_bytes()
    from tests.test_loaders_hostile import _garbled_deflate

    garbled = _garbled_deflate(_zip(tmp_path / "garbled.zip", {"a.txt": LEAVE.encode() * 50}), "a.txt").read_bytes()
    outer = _zip(tmp_path / "outer.zip", {"d0.txt": b"level 0", "l1.zip": data, "broken.zip": b"PK\x03\x04 cut",
                                          "garbled.zip": garbled})
    into = tmp_path / "into"
    into.mkdir()
    found = unpack_documents(outer, into)
    assert [inside for _, inside in found.files] == ["d0.txt", "l1.zip/d1.txt", "l1.zip/l2.zip/d2.txt",
                                                     "l1.zip/l2.zip/l3.zip/d3.txt"]
    assert [file.read_bytes() for file, _ in found.files] == [b"level 0", b"level 1", b"level 2", b"level 3"]
    broken, garbled_note, deep = found.unread
    assert not found.skipped
    assert broken == "broken.zip (damaged, or a document package named .zip)"
    assert garbled_note.startswith("garbled.zip is damaged (a.txt: ") and garbled_note.endswith("save the document again")
    assert deep == "l1.zip/l2.zip/l3.zip/l4.zip (an archive nested more than 3 deep)"
    assert not list(into.rglob("*.zip"))  # each inner archive's copy is deleted once read


def test_renamed_archives_are_read_as_what_they_are(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: a ZIP saved as 资料.rar (or a tar.gz as .zip) made ``ingest build`` answer
    "... is a ZIP archive of files, not a ... document: build it into a knowledge base", which is
    what the user had just asked for. The reader is chosen by the bytes now, at the top and inside."""
    zip_as_rar = tmp_path / "资料.rar"
    zip_as_rar.write_bytes(_zip(tmp_path / "a.zip", {"制度/请假.txt": LEAVE.encode()}).read_bytes())
    tar_as_zip = tmp_path / "归档.zip"
    tar_as_zip.write_bytes(_tar_gz(tmp_path / "b.tar.gz", {"制度/出差.txt": TRAVEL.encode()}).read_bytes())
    assert is_archive(zip_as_rar) and is_archive(tar_as_zip)
    kb = ["--kb", "renamed", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", str(zip_as_rar), str(tar_as_zip), *kb]) == 0
    assert "files: 2 (2 added" in capsys.readouterr().out
    assert main(["list", *kb[:4], "--json"]) == 0
    sources = sorted(d["source"] for d in json.loads(capsys.readouterr().out))
    assert sources == sorted([f"{zip_as_rar.resolve()}/制度/请假.txt", f"{tar_as_zip.resolve()}/制度/出差.txt"])
    outer = _zip(tmp_path / "outer.zip", {"x.7z": zip_as_rar.read_bytes(), "y.rar": tar_as_zip.read_bytes()})
    (tmp_path / "into").mkdir()
    found = unpack_documents(outer, tmp_path / "into")
    assert [inside for _, inside in found.files] == ["x.7z/制度/请假.txt", "y.rar/制度/出差.txt"]
    assert not found.unread and not found.skipped


def test_archives_inside_that_were_not_read_are_named_as_archives_not_as_other_types(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: a damaged or locked archive inside was counted among the "files of other types
    skipped" in the build's last line and note. It is named as an archive not read, with why, in
    the CLI's note, the summary line and the web page's status line."""
    outer = _zip(tmp_path / "资料.zip", {"a.txt": LEAVE.encode(), "cut.zip": b"PK\x03\x04 cut", "x.exe": b"MZ"})
    kb = ["--kb", "unread", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none"]
    assert main(["build", str(outer), *kb]) == 0
    out, err = capsys.readouterr()
    assert "; 1 file of other types skipped; 1 archive inside not read" in out
    assert ("note: skipped 1 file of other types in the folders and archives given (资料.zip/x.exe); did not read "
            "1 archive inside (资料.zip/cut.zip (damaged, or a document package named .zip))") in err
    services = Services(Settings(kb_root=tmp_path / "kbs"))
    report = services.add_files("unread", [outer])
    assert report.unread == ["资料.zip/cut.zip (damaged, or a document package named .zip)"]
    assert report.summary().endswith("; 1 file of other types skipped; 1 archive inside not read")
    from app.web.manage import ManageHandlers

    services.create_kb("web")
    status = list(ManageHandlers(services).build("web", [str(outer)]))[-1][0]
    assert "新增 1" in status and "\n未读取 / note: " in status and "资料.zip/cut.zip (damaged" in status


def test_the_zip_bomb_limits_count_every_nested_level_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression guard for nested bombs: each inner archive under the limit, together over it,
    refuses the whole archive (not just the inner one) in one line."""
    import kb.loaders.sniff as sniff

    monkeypatch.setattr(sniff, "MAX_UNPACKED_BYTES", 3000)
    inner = _zip(tmp_path / "part.zip", {"a.txt": b"x" * 1000}).read_bytes()
    outer = _zip(tmp_path / "all.zip", {f"part{n}.zip": inner for n in range(4)})
    (tmp_path / "into").mkdir()
    with pytest.raises(DocumentLoadError, match=r"all.zip would unpack to over 0 MiB .*possible zip bomb"):
        unpack_documents(outer, tmp_path / "into")


def test_a_password_protected_archive_is_one_line_and_skipped_inside_another(tmp_path: Path) -> None:
    """Regression guard (found by fuzzing nested archives): a ZIP member flagged encrypted made
    zipfile raise RuntimeError ("password required for extraction"), a traceback instead of one
    line. The outer archive is refused in one line; inside another it is skipped and named. A
    DOCX or EPUB with encrypted parts (read through the same check) is one line that says so too:
    the DOCX was called "damaged", the EPUB raised the RuntimeError."""
    locked = _zip(tmp_path / "locked.zip", {"a.txt": LEAVE.encode()})
    data = bytearray(locked.read_bytes())
    for offset in (6, data.rindex(b"PK\x01\x02") + 8):  # the local and the central header's flags
        data[offset] |= 0x1
    locked.write_bytes(bytes(data))
    unread = _refused_alone_and_named_inside(tmp_path, locked, r"^locked.zip is password-protected \(a.txt\); save or")
    assert unread == "locked.zip is password-protected (a.txt); save or unpack it without the password first"
    from tests.fixtures.documents import write_epub

    chapters = [SourceChapter("第一章 甲", ["乙。"])]
    for package in (write_docx(tmp_path / "locked.docx", chapters), write_epub(tmp_path / "locked.epub", chapters)):
        data = bytearray(package.read_bytes())
        for header, flags in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            at = data.find(header)
            while at >= 0:
                data[at + flags] |= 0x1
                at = data.find(header, at + 4)
        package.write_bytes(bytes(data))
        with pytest.raises(DocumentLoadError, match=rf"{package.name} is password-protected \("):
            open_document(package)


# ----- 7z and RAR (libarchive) ---------------------------------------------------------------

needs_libarchive = pytest.mark.skipif(not _libarchive_loads(), reason="libarchive (the system library) is missing")


def _seven_zip(path: Path, members: dict[str, bytes]) -> Path:
    """A 7z archive written by libarchive itself (LZMA, as 7-Zip writes them)."""
    import libarchive

    with libarchive.file_writer(str(path), "7zip") as archive:
        for name, data in members.items():
            archive.add_file_from_memory(name, len(data), data)
    return path


def _rar4_block(kind: int, flags: int, body: bytes, data: bytes = b"") -> bytes:
    """One RAR 4 block: its header (CRC32's low 16 bits, type, flags, size, ``body``), then ``data``."""
    import struct
    import zlib

    header = struct.pack("<BHH", kind, flags, 7 + len(body)) + body
    return struct.pack("<H", zlib.crc32(header) & 0xFFFF) + header + data


def _rar4(path: Path, members: dict[str, bytes], *, utf8_names: bool = True, encrypted: bool = False) -> Path:
    """A RAR 4 archive of stored (uncompressed) members, written here from the format's block
    layout (no tool writes RAR but WinRAR): the marker, a main header, one file header per member
    (flagged Unicode for UTF-8 names; without it, GBK bytes, as old WinRAR on Chinese Windows
    wrote them) followed by its bytes, and the end block; header CRCs are CRC32's low 16 bits.
    ``encrypted`` sets each member's password flag (its bytes stay as given)."""
    import struct
    import zlib

    block = _rar4_block
    out = b"Rar!\x1a\x07\x00" + block(0x73, 0, bytes(6))
    for name, data in members.items():
        raw = name.encode("utf-8" if utf8_names else "gbk")
        flags = 0x8000 | (0x0200 if utf8_names and not name.isascii() else 0) | (0x0004 if encrypted else 0)
        # (long block; Unicode name; encrypted)
        body = struct.pack("<IIBIIBBHI", len(data), len(data), 3, zlib.crc32(data), 0x5A210000, 29, 0x30, len(raw),
                           0o100644) + raw  # sizes, Unix, CRC, DOS time, version 2.9, method "store", mode
        out += block(0x74, flags, body, data)
    path.write_bytes(out + block(0x7B, 0x4000, b""))
    return path


def _rar5(path: Path, members: dict[str, bytes]) -> Path:
    """A RAR 5 archive of stored members, written here from RARLAB's "RAR 5.0 archive format": the
    signature, a main header, one file header per member (data size, file flags "CRC32 present", size,
    Unix mode, CRC32, method "store", host Unix, UTF-8 name) followed by its bytes, and the end of
    archive header. Each header: CRC32 of the rest, its size, type and flags, all vints (7 bits a byte,
    low first, the high bit on all but the last)."""
    import struct
    import zlib

    def vint(number: int) -> bytes:
        out = bytearray()
        while True:
            out.append(number & 0x7F | (0x80 if number >> 7 else 0))
            number >>= 7
            if not number:
                return bytes(out)

    def header(kind: int, flags: int, fields: bytes, data: bytes = b"") -> bytes:
        rest = vint(kind) + vint(flags) + fields
        return struct.pack("<I", zlib.crc32(vint(len(rest)) + rest)) + vint(len(rest)) + rest + data

    out = b"Rar!\x1a\x07\x01\x00" + header(1, 0, vint(0))  # main header: no archive flags
    for name, data in members.items():
        raw = name.encode()
        fields = (vint(len(data)) + vint(0x0004) + vint(len(data)) + vint(0o100644)
                  + struct.pack("<I", zlib.crc32(data)) + vint(0) + vint(1) + vint(len(raw)) + raw)
        out += header(2, 0x0002, fields, data)  # header flag 0x0002: a data area (the member's bytes) follows
    path.write_bytes(out + header(5, 0, vint(0)))  # end of archive: no flags (the last volume)
    return path


@needs_libarchive
@pytest.mark.parametrize("kind", ["7z", "rar", "rar-gbk"])
def test_7z_and_rar_archives_build_like_zips(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``ingest build 资料.rar`` / ``资料.7z`` (the archives Chinese users send most) were refused with
    "unpack it and give the folder". They build now, through libarchive: each document under its
    path inside (GBK names of an old RAR read right), a rebuild skips them, ``remove`` removes them."""
    members = {"制度/请假.txt": LEAVE.encode(), "制度/出差.md": TRAVEL.encode(), "工具/setup.exe": b"MZ"}
    name = "资料.7z" if kind == "7z" else "资料.rar"
    archive = (_seven_zip(tmp_path / name, members) if kind == "7z" else
               _rar4(tmp_path / name, members, utf8_names=kind == "rar"))
    assert is_archive(archive)
    with pytest.raises(DocumentLoadError, match="archive of files, not a document: build it into a knowledge base"):
        open_document(archive)
    kb = ["--kb", "seven", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", str(archive), *kb]) == 0
    assert f"{name}/工具/setup.exe" in capsys.readouterr().err
    assert main(["list", *kb[:4], "--json"]) == 0
    sources = sorted(d["source"] for d in json.loads(capsys.readouterr().out))
    assert sources == [f"{archive.resolve()}/{inside}" for inside in ("制度/出差.md", "制度/请假.txt")]
    assert main(["build", str(archive), *kb]) == 0
    assert "2 unchanged" in capsys.readouterr().out
    assert main(["remove", str(archive), *kb[:4]]) == 0
    from app.uploads import check_content

    services = Services(Settings(kb_root=tmp_path / "kbs"))
    assert {".7z", ".rar"} <= set(services.upload_types(archives=True))  # the web upload takes them too
    assert check_content(services.check_upload(archive, archives=True)) == archive


@needs_libarchive
def test_7z_inside_a_zip_damaged_7z_and_7z_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 7z inside a ZIP is read like any archive inside; a cut 7z is one line (skipped and named
    inside another); the zip-bomb limits count the bytes a 7z actually unpacks, not what its headers say."""
    import kb.loaders.sniff as sniff

    seven = _seven_zip(tmp_path / "a.7z", {"制度/请假.txt": LEAVE.encode() * 40}).read_bytes()
    outer = _zip(tmp_path / "outer.zip", {"a.7z": seven, "cut.7z": seven[: len(seven) // 2]})
    (tmp_path / "into").mkdir()
    found = unpack_documents(outer, tmp_path / "into")
    assert [inside for _, inside in found.files] == ["a.7z/制度/请假.txt"]
    assert found.files[0][0].read_bytes() == LEAVE.encode() * 40
    (skipped,) = found.unread
    assert skipped.startswith("cut.7z is a damaged 7Z archive (")
    cut = tmp_path / "cut.7z"
    cut.write_bytes(seven[: len(seven) // 2])
    (tmp_path / "into2").mkdir()
    with pytest.raises(DocumentLoadError, match=r"^cut.7z is a damaged 7Z archive \("):
        unpack_documents(cut, tmp_path / "into2")
    monkeypatch.setattr(sniff, "MAX_UNPACKED_BYTES", 1000)
    (tmp_path / "into3").mkdir()
    with pytest.raises(DocumentLoadError, match=r"a.7z would unpack to over 0 MiB .*possible zip bomb"):
        unpack_documents(tmp_path / "a.7z", tmp_path / "into3")


@needs_libarchive
def test_a_7z_member_whose_bytes_fail_its_crc_is_refused_not_built_garbled(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression guard: libarchive reports a 7z member's CRC mismatch only as a warning, after it
    handed out the wrong bytes, and libarchive-c just logs it (an unnamed line on stderr): a
    damaged 7z built garbled text (fuzz: 2 of 900 mutated archives). Now it is a damaged archive."""
    import libarchive

    path = tmp_path / "资料.7z"
    with libarchive.file_writer(str(path), "7zip", options="compression=store") as archive:
        archive.add_file_from_memory("制度/请假.txt", len(LEAVE.encode()), LEAVE.encode())
    data = bytearray(path.read_bytes())
    data[data.find(LEAVE.encode()[:12]) + 3] ^= 1
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR):  # a quiet app must not hide the mismatch from the check
        unread = _refused_alone_and_named_inside(tmp_path, path, r"^资料.7z is a damaged 7Z archive \(7-Zip bad CRC: ")
    assert unread.startswith("资料.7z is a damaged 7Z archive (7-Zip bad CRC: ")


def test_libarchive_warnings_are_said_once_under_the_archive_name(caplog: pytest.LogCaptureFixture) -> None:
    """libarchive-c's warnings (e.g. a name it cannot convert) were printed bare, without the archive;
    now each is said once with its name, and another thread's warning is left to that thread."""
    import threading

    from kb.loaders.libarchive_warnings import ChecksumMismatch, watched

    log = logging.getLogger("libarchive")
    with caplog.at_level(logging.WARNING), watched("资料.rar") as watch:
        log.warning("Pathname cannot be converted")
        log.warning("Pathname cannot be converted")
        other = threading.Thread(target=lambda: log.warning("7-Zip bad CRC: in another archive"))
        other.start()
        other.join()
        watch.check()  # the other thread's CRC warning is not this archive's
        log.warning("7-Zip bad CRC: 0x1 should be 0x2")
        with pytest.raises(ChecksumMismatch, match="bad CRC: 0x1"):
            watch.check()
    named = [r.getMessage() for r in caplog.records if r.name == "kb.loaders.libarchive_warnings"]
    assert named == ["资料.rar: Pathname cannot be converted"]
    assert log.filters == []


def test_without_libarchive_a_7z_is_one_line_that_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where libarchive-c or the system library is missing, a 7z/RAR build is one line naming what
    to install (or to unpack it), not an ImportError traceback."""
    import builtins

    real_import = builtins.__import__

    def no_libarchive(name: str, *args: object, **kwargs: object) -> object:
        if name == "libarchive":
            raise OSError("libarchive.so: cannot open shared object file")
        return real_import(name, *args, **kwargs)

    archive = _rar4(tmp_path / "资料.rar", {"a.txt": LEAVE.encode()})
    monkeypatch.setattr(builtins, "__import__", no_libarchive)
    (tmp_path / "into").mkdir()
    with pytest.raises(DocumentLoadError, match=r"^资料.rar is a RAR archive, and reading RAR needs the libarchive "
                                                r"library \(Debian/Ubuntu: apt install libarchive13"):
        unpack_documents(archive, tmp_path / "into")


@needs_libarchive
def test_a_password_protected_rar_is_one_line_and_skipped_inside_another(tmp_path: Path) -> None:
    """Regression guard: libarchive reads a RAR member flagged encrypted out as its ciphertext,
    without an error, so a password-protected RAR would have built its members' ciphertext. It is
    refused in one line now; inside a ZIP it is skipped and named."""
    locked = _rar4(tmp_path / "locked.rar", {"a.txt": LEAVE.encode()}, encrypted=True)
    unread = _refused_alone_and_named_inside(tmp_path, locked, r"^locked.rar is password-protected; save or unpack it")
    assert unread == "locked.rar is password-protected; save or unpack it without the password first"


def test_a_pipe_given_to_a_build_is_one_line_not_a_hang(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: ``ingest build`` or ``summarize`` of a named pipe (FIFO) blocked forever in the
    first read of its bytes; a pipe, socket or device is refused in one line now."""
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    fifo = tmp_path / "novel.txt"
    os.mkfifo(fifo)
    assert main(["build", str(fifo), "--kb", "fifo", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none"]) == 2
    err = capsys.readouterr().err
    assert "novel.txt is not a regular file (a pipe, socket or device): save it to a file first" in err
    with pytest.raises(DocumentLoadError, match="is not a regular file"):  # a summary reads through this
        open_document(fifo)


# ----- multi-volume RAR sets (kb.loaders.volumes) ----------------------------------------------


def _rar4_set(folder: Path, names: list[str], members: dict[str, bytes]) -> list[Path]:
    """A RAR 4 set of stored members over ``len(names)`` volumes, written as ``_rar4`` writes one
    archive: the first member's bytes split evenly across the volumes (flagged split before /
    after), the others whole in the last; main headers flagged volume (and first volume), each
    end block but the last flagged "continued in the next volume"."""
    import struct
    import zlib

    block = _rar4_block

    def file_block(name: str, part: bytes, data: bytes, flags: int) -> bytes:
        raw = name.encode()
        body = struct.pack("<IIBIIBBHI", len(part), len(data), 3, zlib.crc32(part if flags & 0x02 else data),
                           0x5A210000, 29, 0x30, len(raw), 0o100644) + raw
        return block(0x74, 0x8000 | (0x0200 if not name.isascii() else 0) | flags, body, part)

    (first_name, first), *rest = members.items()
    step = -(-len(first) // len(names))
    paths = []
    for number, name in enumerate(names):
        last = number == len(names) - 1
        part = first[number * step:(number + 1) * step]
        volume = b"Rar!\x1a\x07\x00" + block(0x73, 0x0011 | (0x0100 if number == 0 else 0), bytes(6))
        volume += file_block(first_name, part, first, (0x01 if number else 0) | (0 if last else 0x02))
        if last:
            volume += b"".join(file_block(n, d, d, 0) for n, d in rest)
        paths.append(folder / name)
        paths[-1].write_bytes(volume + block(0x7B, 0x4000 | (0 if last else 0x0001), b""))
    return paths


@needs_libarchive
def test_a_multi_volume_rar_builds_once_from_its_first_volume(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: ``ingest build 资料.part1.rar`` (or ``*.rar`` over a set) read each volume as an
    archive of its own: "资料.part1.rar is a damaged RAR archive (Truncated RAR file data)". The
    volumes are read together now, as given or found beside the first, and recorded under it."""
    members = {"制度/请假.txt": LEAVE.encode() * 30, "制度/出差.txt": TRAVEL.encode()}
    parts = _rar4_set(tmp_path, ["资料.part1.rar", "资料.part2.rar", "资料.part3.rar"], members)
    kb = ["--kb", "vol", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    for given in ([parts[0]], parts, [parts[2], parts[1], parts[0]]):
        assert main(["build", *map(str, given), *kb]) == 0, capsys.readouterr().err
        capsys.readouterr()
        assert main(["list", *kb[:4], "--json"]) == 0
        sources = sorted(d["source"] for d in json.loads(capsys.readouterr().out))
        assert sources == [f"{parts[0].resolve()}/{inside}" for inside in ("制度/出差.txt", "制度/请假.txt")]
    (tmp_path / "into").mkdir()
    found = unpack_documents(parts[0], tmp_path / "into", volumes=parts[1:])
    assert {inside: file.read_bytes() for file, inside in found.files} == members
    old = _rar4_set(tmp_path, ["旧.rar", "旧.r00"], members)  # the older naming: .rar, .r00, .r01, ...
    assert main(["build", str(old[0]), "--kb", "old", *kb[2:]]) == 0
    services = Services(Settings(kb_root=tmp_path / "kbs"))  # the web upload: each copy in a folder of its own
    copies = []
    for number, part in enumerate(parts):
        (tmp_path / f"upload{number}").mkdir()
        copies.append(tmp_path / f"upload{number}" / part.name)
        copies[-1].write_bytes(part.read_bytes())
    services.create_kb("web", embedding_model="none")
    assert sorted(services.add_files("web", copies).added) == ["资料.part1.rar/制度/出差.txt", "资料.part1.rar/制度/请假.txt"]


@needs_libarchive
def test_sets_of_volumes_inside_an_archive_are_read_once_as_their_first_volume(tmp_path: Path) -> None:
    """Regression: the volumes of a set inside an archive (a ZIP of 资料.part1.rar, part2.rar ...,
    or of 资料.7z.001, .002 ...) were read one by one: every one named as damaged and nothing built
    ("资料.part1.rar is a damaged RAR archive (Truncated RAR file data)"; the 7z pieces were files
    of other types). A set is read once now, recorded under its first volume; a set without its
    first volume is named with the volume to add, and the rest builds."""
    members = {"制度/请假.txt": LEAVE.encode() * 30, "制度/出差.txt": TRAVEL.encode()}
    (tmp_path / "rar").mkdir()
    rar = _rar4_set(tmp_path / "rar", ["资料.part1.rar", "资料.part2.rar", "资料.part3.rar"], members)
    seven = _seven_zip(tmp_path / "b.7z", {"手册.txt": LEAVE.encode() * 50}).read_bytes()
    third = -(-len(seven) // 3)
    pieces = {f"备份/手册.7z.{n + 1:03d}": seven[n * third:(n + 1) * third] for n in range(3)}
    outer = _zip(tmp_path / "outer.zip", {**{f"卷/{p.name}": p.read_bytes() for p in rar}, **pieces,
                                           **{f"副本/{p.name}": p.read_bytes() for p in rar},  # the same names
                                           "孤/旧.part2.rar": rar[1].read_bytes(), "说明.txt": TRAVEL.encode()})
    (tmp_path / "into").mkdir()
    found = unpack_documents(outer, tmp_path / "into")
    got = {inside: file.read_bytes() for file, inside in found.files}
    assert got == {**{f"{folder}/资料.part1.rar/{k}": v for k, v in members.items() for folder in ("卷", "副本")},
                   "备份/手册.7z.001/手册.txt": LEAVE.encode() * 50, "说明.txt": TRAVEL.encode()}
    assert found.unread == ["旧.part2.rar is volume 2 of a multi-volume archive whose first volume "
                            "(旧.part1.rar) was not given: give all its volumes together"]
    assert found.skipped == []


@needs_libarchive
def test_a_multi_volume_rar_with_a_volume_missing_is_one_line_naming_it(tmp_path: Path) -> None:
    """The first volume not given, a gap in the middle, or the set cut after its last volume
    present: one line each, naming the volume to add."""
    from kb.loaders.folders import expand_documents

    parts = _rar4_set(tmp_path, ["书.part01.rar", "书.part02.rar", "书.part03.rar"], {"a.txt": LEAVE.encode() * 30})

    def expand(*given: Path) -> object:
        into = tmp_path / f"into{len(list(tmp_path.glob('into*')))}"
        return expand_documents(list(given), source=str, unpack_into=into)

    with pytest.raises(DocumentLoadError, match=r"^书.part02.rar is volume 2 of a multi-volume archive whose "
                                                r"first volume \(书.part01.rar\) was not given: give all its "
                                                r"volumes together$"):
        expand(parts[1], parts[2])
    (tmp_path / "other").mkdir()
    twin = tmp_path / "other" / parts[0].name
    twin.write_bytes(parts[0].read_bytes())
    with pytest.raises(DocumentLoadError, match=r"are both volume 1 of a multi-volume archive: build one set at a"):
        expand(parts[0], twin)
    parts[1].unlink()
    with pytest.raises(DocumentLoadError, match=r"^书.part01.rar is a multi-volume archive, and its volume 2 "
                                                r"\(书.part02.rar\) is missing"):
        expand(parts[0])
    parts[2].unlink()
    with pytest.raises(DocumentLoadError, match=r"^书.part01.rar is a multi-volume RAR archive that cannot be "
                                                r"read to its end \(.*\); the volumes found end at volume 1 \(书.part01.rar\): give "
                                                r"all of them together$"):
        expand(parts[0])


@needs_libarchive
@pytest.mark.parametrize("kind", ["7z", "zip"])
def test_7zip_split_volumes_build_as_one_archive(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """7-Zip's "split to volumes" (资料.7z.001, 资料.7z.002, ...: plain pieces of the archive's bytes)
    were not read at all (".001" is no archive suffix), nor was a .zip split the same way. The pieces
    are read as one archive now, recorded under the first; a missing piece is one line."""
    members = {"制度/请假.txt": LEAVE.encode() * 20, "制度/出差.txt": TRAVEL.encode()}
    whole = _seven_zip(tmp_path / "whole.7z", members) if kind == "7z" else _zip(tmp_path / "whole.zip", members)
    data = whole.read_bytes()
    step = -(-len(data) // 3)
    pieces = [tmp_path / f"资料.{kind}.{n:03d}" for n in (1, 2, 3)]
    for number, piece in enumerate(pieces):
        piece.write_bytes(data[number * step:(number + 1) * step])
    kb = ["--kb", "split", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", *map(str, pieces), *kb]) == 0, capsys.readouterr().err
    capsys.readouterr()
    assert main(["list", *kb[:4], "--json"]) == 0
    sources = sorted(d["source"] for d in json.loads(capsys.readouterr().out))
    assert sources == [f"{pieces[0].resolve()}/{inside}" for inside in ("制度/出差.txt", "制度/请假.txt")]
    from app.uploads import check_content

    services = Services(Settings(kb_root=tmp_path / "kbs"))  # the web upload, each copy in a folder of its own
    copies = []
    for number, piece in enumerate(pieces):
        (tmp_path / f"upload{number}").mkdir()
        copies.append(tmp_path / f"upload{number}" / piece.name)
        copies[-1].write_bytes(piece.read_bytes())
    checked = [check_content(services.check_upload(copy, archives=True)) for copy in copies]
    with pytest.raises(UserError, match="file type not allowed"):
        services.check_upload(copies[1])  # the summary tab takes no archives
    services.create_kb("web", embedding_model="none")
    assert sorted(services.add_files("web", checked).added) == [f"资料.{kind}.001/制度/出差.txt",
                                                                f"资料.{kind}.001/制度/请假.txt"]
    pieces[1].unlink()
    assert main(["build", str(pieces[0]), *kb]) == 2
    err = capsys.readouterr().err
    assert f"资料.{kind}.001 is a multi-volume archive, and its volume 2 (资料.{kind}.002) is missing" in err
    if kind == "7z":  # its headers are at the end (a ZIP's members can be read from their local headers)
        pieces[1].write_bytes(data[step:2 * step])
        pieces[2].unlink()
        assert main(["build", str(pieces[0]), *kb]) == 2
        assert "资料.7z.001 is a multi-volume 7Z archive that cannot be read to its end (" in capsys.readouterr().err


def _split_zip(folder: Path, cuts: list[int], *, comment: bytes = b"") -> list[Path]:
    """A ZIP of three deflated members, with ``comment``, cut into 书.zip.001, 书.zip.002, ... in
    ``folder`` at ``cuts``: offsets from the start of its central directory, or from its end where
    negative."""
    whole = _zip(folder / "whole.zip", {"制度/请假.txt": LEAVE.encode() * 20, "制度/出差.txt": TRAVEL.encode() * 20,
                                        "制度/报销.txt": "第一章 报销\n报销凭发票。\n".encode() * 20})
    with zipfile.ZipFile(whole, "a") as archive:
        archive.comment = comment
    with zipfile.ZipFile(whole) as archive:
        directory = archive.start_dir
    data = whole.read_bytes()
    whole.unlink()
    bounds = [0, *(len(data) + cut if cut < 0 else directory + cut for cut in cuts), len(data)]
    pieces = [folder / f"书.zip.{n:03d}" for n in range(1, len(bounds))]
    for piece, start, stop in zip(pieces, bounds, bounds[1:]):
        piece.write_bytes(data[start:stop])
    return pieces


_COMMENT = "二〇二四年版".encode()  # the ZIP's comment: 18 bytes after its 22-byte end record


@pytest.mark.parametrize("cut", [30, -len(_COMMENT) - 22 + 6, -5],
                         ids=["in the central directory", "in the end record", "in the comment"])
def test_a_split_zip_missing_its_last_piece_is_one_line_naming_it(
        cut: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: a split ZIP missing its last piece built a partial knowledge base. libarchive reads
    a ZIP's members from their local headers, so pieces cut short anywhere after the last member's
    data (in the central directory, the end record or its comment) built without a word. The pieces
    must end with the ZIP's end of central directory record now; a set that does not is refused in
    one line naming the piece to add (exit code 2, no traceback), as a missing first or middle piece is."""
    from kb.loaders.volumes import gather_volumes

    pieces = _split_zip(tmp_path, [-250, cut], comment=_COMMENT)  # the second piece starts in the last member
    assert gather_volumes(pieces).volumes == {pieces[0]: pieces[1:]}  # whole: read as one archive
    assert gather_volumes(pieces[:1]).volumes == {pieces[0]: pieces[1:]}  # the others found beside the first
    pieces[2].unlink()
    kb = ["--kb", "split", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", *map(str, pieces[:2]), *kb]) == 2
    assert capsys.readouterr().err == ("ingest: error: 书.zip.001 is a multi-volume archive, and its volume 3 "
                                       "(书.zip.003) is missing: give all its volumes together\n")
    assert not (tmp_path / "kbs" / "split").exists()
    pieces[1].unlink()  # the first piece alone
    with pytest.raises(DocumentLoadError, match=r"^书.zip.001 is a multi-volume archive, and its volume 2 "
                                                r"\(书.zip.002\) is missing: give all its volumes together$"):
        gather_volumes(pieces[:1])


def test_a_split_zip_missing_its_first_or_a_middle_piece_or_inside_an_archive_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A split ZIP without its first piece or one in the middle is refused in one line naming it; a
    set inside an archive without its last piece is named and left out, the rest builds. A whole
    set of one piece (7-Zip writes 书.zip.001 alone for a small archive) is read as it is."""
    from kb.loaders.volumes import gather_volumes

    pieces = _split_zip(tmp_path, [-250, 30])
    kb = ["--kb", "split", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", *map(str, pieces[1:]), *kb]) == 2
    assert capsys.readouterr().err == ("ingest: error: 书.zip.002 is volume 2 of a multi-volume archive whose first "
                                       "volume (书.zip.001) was not given: give all its volumes together\n")
    middle = pieces[1].read_bytes()
    pieces[1].unlink()
    assert main(["build", *map(str, [pieces[0], pieces[2]]), *kb]) == 2
    assert capsys.readouterr().err == ("ingest: error: 书.zip.001 is a multi-volume archive, and its volume 2 "
                                       "(书.zip.002) is missing: give all its volumes together\n")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as archive:
        archive.writestr("说明.txt", TRAVEL)
        archive.writestr("备份/书.zip.001", pieces[0].read_bytes())
        archive.writestr("备份/书.zip.002", middle)  # 书.zip.003 not there
    (tmp_path / "into").mkdir()
    found = unpack_documents(outer, tmp_path / "into")
    assert [name for _, name in found.files] == ["说明.txt"]
    assert found.unread == ["书.zip.001 is a multi-volume archive, and its volume 3 (书.zip.003) is missing: give "
                            "all its volumes together"]
    (tmp_path / "one").mkdir()
    alone = _zip(tmp_path / "one" / "书.zip.001", {"a.txt": LEAVE.encode()})
    assert gather_volumes([alone]).volumes == {alone: []}


@needs_libarchive
@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("cut", ["at a member's start", "inside the end block"])
def test_a_split_rar_missing_its_last_piece_is_one_line_naming_it(
        version: int, cut: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: a byte-split RAR missing its last piece built a partial knowledge base, dropping members.
    Cut where a member starts, libarchive took the early end for the archive's end: 书.rar.001 and .002 of
    three built 请假.txt and dropped 出差.txt. The pieces must end with the RAR's end block (RAR 4) or end
    of archive header (RAR 5) now; a set that does not is refused in one line naming the piece to add
    (exit code 2), as a ZIP's is. A whole set is read as before."""
    from kb.loaders.volumes import gather_volumes

    write = _rar4 if version == 4 else _rar5
    first = {"制度/请假.txt": LEAVE.encode() * 20}
    members = {**first, "制度/出差.txt": TRAVEL.encode() * 20}
    start = len(write(tmp_path / "whole.rar", first).read_bytes()) - (7 if version == 4 else 8)  # less its end
    data = write(tmp_path / "whole.rar", members).read_bytes()
    (tmp_path / "whole.rar").unlink()
    bounds = [0, 100, start if cut == "at a member's start" else len(data) - 3, len(data)]
    pieces = [tmp_path / f"书.rar.{n:03d}" for n in (1, 2, 3)]
    for piece, low, high in zip(pieces, bounds, bounds[1:]):
        piece.write_bytes(data[low:high])
    assert gather_volumes(pieces[:1]).volumes == {pieces[0]: pieces[1:]}
    (tmp_path / "into").mkdir()
    found = unpack_documents(pieces[0], tmp_path / "into", volumes=pieces[1:])
    assert {inside: file.read_bytes() for file, inside in found.files} == members
    pieces[2].unlink()
    kb = ["--kb", "split", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", *map(str, pieces[:2]), *kb]) == 2
    assert capsys.readouterr().err == ("ingest: error: 书.rar.001 is a multi-volume archive, and its volume 3 "
                                       "(书.rar.003) is missing: give all its volumes together\n")
    lone = tmp_path / "单.rar.001"  # one piece up to the same cut (libarchive reads it alone, not as a set)
    lone.write_bytes(data[:bounds[2]])
    assert main(["build", str(lone), *kb]) == 2
    assert capsys.readouterr().err == ("ingest: error: 单.rar.001 is a multi-volume archive, and its volume 2 "
                                       "(单.rar.002) is missing: give all its volumes together\n")
    assert not (tmp_path / "kbs" / "split").exists()


def _rar4_headers_locked(path: Path) -> bytes:
    """The bytes of a RAR 4 archive whose block headers are encrypted (WinRAR -hp), as far as they matter here:
    the main header flagged so, and the end block as encrypted bytes (no end block to be seen)."""
    import zlib

    data = bytearray(_rar4(path, {"a.txt": LEAVE.encode() * 20}).read_bytes())
    data[10:12] = (0x0080).to_bytes(2, "little")  # the main header's flags: block headers encrypted
    data[7:9] = (zlib.crc32(bytes(data[9:20])) & 0xFFFF).to_bytes(2, "little")
    data[-7:] = bytes(range(1, 8))
    return bytes(data)


@needs_libarchive
def test_a_split_rar_whose_headers_are_encrypted_is_refused_as_locked(tmp_path: Path) -> None:
    """A RAR whose headers are encrypted (WinRAR -hp) has its end block encrypted too: its pieces are
    not judged by it (not "a piece is missing"), and the set is refused as password-protected."""
    from kb.loaders.folders import expand_documents

    data = _rar4_headers_locked(tmp_path / "whole.rar")
    pieces = [tmp_path / "锁.rar.001", tmp_path / "锁.rar.002"]
    pieces[0].write_bytes(data[:100])
    pieces[1].write_bytes(data[100:])
    with pytest.raises(DocumentLoadError, match=r"^锁.rar.001 is password-protected; save or unpack it without"):
        expand_documents([pieces[0]], source=str, unpack_into=tmp_path / "into")


@needs_libarchive
@pytest.mark.parametrize("version", [4, 5])
def test_a_single_rar_cut_where_a_member_starts_is_refused_not_built_partially(
        version: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: a single RAR cut short exactly where a member starts (a partial download) built a knowledge
    base from the members before the cut, without a word: libarchive reads a RAR's blocks one after another and
    took the cut for the archive's end (资料.rar of 请假.txt and 出差.txt built 请假.txt alone). Only split sets
    were checked for the RAR's end record (RAR 4's end block, RAR 5's end of archive header); a single RAR is
    too now: one line, exit code 2, named and skipped inside another archive. The whole archive builds."""
    write = _rar4 if version == 4 else _rar5
    archive = tmp_path / "资料.rar"
    first = {"制度/请假.txt": LEAVE.encode() * 20}
    members = {**first, "制度/出差.txt": TRAVEL.encode() * 20}
    start = len(write(archive, first).read_bytes()) - (7 if version == 4 else 8)  # where the next block starts
    whole = write(archive, members).read_bytes()
    (tmp_path / "whole").mkdir()
    found = unpack_documents(archive, tmp_path / "whole")
    assert {inside: file.read_bytes() for file, inside in found.files} == members
    archive.write_bytes(whole[:start])
    cut = "资料.rar is a damaged RAR archive (cut short: it does not end with the RAR end record"
    unread = _refused_alone_and_named_inside(tmp_path, archive, "^" + re.escape(cut))
    assert unread.startswith(cut)
    kb = ["--kb", "cut", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", str(archive), *kb]) == 2
    assert capsys.readouterr().err.startswith(f"ingest: error: {cut}")
    assert not (tmp_path / "kbs" / "cut").exists()


@needs_libarchive
@pytest.mark.parametrize("version", [4, 5])
def test_a_single_rar_whose_headers_are_encrypted_is_refused_as_locked_not_as_cut(
        version: int, tmp_path: Path) -> None:
    """Guard for the check above: a RAR whose headers are encrypted (WinRAR -hp) hides its end record too; it is
    left to the reader, which refuses it as password-protected, not as cut short."""
    import struct
    import zlib

    archive = tmp_path / "锁.rar"
    if version == 4:
        archive.write_bytes(_rar4_headers_locked(archive))
    else:  # the signature, then an archive encryption header (type 4: version 0, no flags, KDF count, salt)
        rest = bytes([4, 0, 0, 0, 15]) + bytes(16)
        header = struct.pack("<I", zlib.crc32(bytes([len(rest)]) + rest)) + bytes([len(rest)]) + rest
        archive.write_bytes(b"Rar!\x1a\x07\x01\x00" + header + bytes(range(1, 60)))
    (tmp_path / "into").mkdir()
    with pytest.raises(DocumentLoadError, match=r"^锁.rar is password-protected; save or unpack it without"):
        unpack_documents(archive, tmp_path / "into")


@pytest.mark.parametrize("cut", ["where a member starts", "inside a member's header", "at a damaged header"])
def test_a_plain_tar_cut_where_a_member_starts_is_refused_not_built_partially(
        cut: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: Python's tarfile takes the end of the file where a member's header would start, a header cut
    short, or one it cannot read, for the end of the archive, so a plain .tar cut there (a partial download)
    built from the members before it, without a word. Tar writers end an archive with zero blocks (POSIX: two;
    GNU tar, bsdtar, 7-Zip, busybox and tarfile write them, padded or not to a 10240-byte record): a plain tar
    whose last member read is not followed by one is refused in one line now (exit code 2). A whole tar builds,
    and so does one that ends after a single zero block (nothing is missing). A compressed tar cut short is
    refused by its decompressor, as before."""
    import tarfile

    members = {"制度/请假.txt": LEAVE.encode() * 20, "制度/出差.txt": TRAVEL.encode() * 20, "说明.md": b"# x\n"}
    archive = write_tar(tmp_path / "资料.tar", members, mode="w")
    with tarfile.open(archive) as opened:
        second, end = opened.getmembers()[1].offset, opened.offset  # opened.offset: where the zero blocks start
    whole = archive.read_bytes()
    (tmp_path / "whole").mkdir()
    assert len(unpack_documents(archive, tmp_path / "whole").files) == 3
    archive.write_bytes(whole[:end + 512])  # one zero block, then the end of the file
    (tmp_path / "lone").mkdir()
    assert len(unpack_documents(archive, tmp_path / "lone").files) == 3
    data = {"where a member starts": whole[:second], "inside a member's header": whole[:second + 100],
            "at a damaged header": whole[:second + 148] + b"x" + whole[second + 149:]}[cut]  # its checksum
    archive.write_bytes(data)
    refused = ("资料.tar is a damaged tar archive (cut short, or damaged, after 制度/请假.txt: no end-of-archive "
               "block follows it")
    (tmp_path / "cut").mkdir()
    with pytest.raises(DocumentLoadError, match="^" + re.escape(refused)):
        unpack_documents(archive, tmp_path / "cut")
    kb = ["--kb", "cut", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    assert main(["build", str(archive), *kb]) == 2
    assert capsys.readouterr().err.startswith(f"ingest: error: {refused}")


def _zip_s(folder: Path, members: dict[str, bytes]) -> list[Path]:
    """A ZIP cut into three pieces as ``zip -s`` names them (书.z01, 书.z02, 书.zip), in ``folder``:
    the first begins with the split marker, the last ends with the end record of disk 2 (numbered
    from 0). (The directory's offsets are left as they are: only how a piece is told matters here.)"""
    data = bytearray(_zip(folder / "whole.zip", members).read_bytes())
    (folder / "whole.zip").unlink()
    end = data.rfind(b"PK\x05\x06")
    data[end + 4:end + 8] = (2).to_bytes(2, "little") * 2  # the number of this disk, of the directory's first
    third = len(data) // 3
    pieces = [folder / name for name in ("书.z01", "书.z02", "书.zip")]
    for piece, part in zip(pieces, (b"PK\x07\x08" + data[:third], data[third:2 * third], data[2 * third:])):
        piece.write_bytes(part)
    return pieces


def test_a_piece_of_a_zip_split_by_zip_s_is_named_with_how_to_join_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: each piece of a ZIP split by ``zip -s`` (书.z01, 书.z02, ..., 书.zip) was refused as
    text: "书.zip looks binary (it contains NUL bytes ...); save it as UTF-8 text". Each is one line now
    (exit code 2) saying what it is, a piece of a split ZIP that glmkb does not read, and how to join it;
    in a folder or inside an archive 书.zip is named with the same, and the rest builds. A ZIP that zip -s
    wrote in one piece (the split marker first, disk 0) is whole, and builds."""
    from app.uploads import check_content

    (tmp_path / "split").mkdir()
    pieces = _zip_s(tmp_path / "split", {"制度/请假.txt": LEAVE.encode() * 40, "制度/出差.txt": TRAVEL.encode() * 40})
    join = ("one piece of a split ZIP (书.z01, 书.z02, ..., 书.zip), which glmkb does not read: join the pieces "
            "into one ZIP first (zip -s 0 书.zip --out 书-whole.zip, or 7-Zip) and give that")
    kb = ["--kb", "zs", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none", "-q"]
    for piece in pieces:
        assert main(["build", str(piece), *kb]) == 2
        assert capsys.readouterr().err == f"ingest: error: {piece} is {join}\n"
    services = Services(Settings(kb_root=tmp_path / "kbs"))
    with pytest.raises(UserError) as upload:
        check_content(services.check_upload(pieces[2], archives=True))
    assert join in str(upload.value)
    (tmp_path / "split" / "说明.txt").write_text(TRAVEL, encoding="utf-8")
    assert main(["build", str(tmp_path / "split"), *kb]) == 0
    assert f"did not read 1 archive inside (书.zip ({join}))" in capsys.readouterr().err
    outer = _zip(tmp_path / "outer.zip", {f"备份/{p.name}": p.read_bytes() for p in pieces} | {"说明.txt": b"x"})
    (tmp_path / "into").mkdir()
    found = unpack_documents(outer, tmp_path / "into")
    assert ([inside for _, inside in found.files], found.unread) == (["说明.txt"], [f"备份/书.zip ({join})"])
    whole = _zip(tmp_path / "one.zip", {"制度/请假.txt": LEAVE.encode()})
    whole.write_bytes(b"PK\x07\x08" + whole.read_bytes())
    assert main(["build", str(whole), "--kb", "one", *kb[2:]]) == 0


@needs_libarchive
def test_archives_in_a_folder_are_read_and_the_unreadable_ones_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: ``ingest build 资料/`` skipped every archive in the folder as a "file of other
    types" (archives inside archives were read, archives inside folders were not). They are read
    now, volumes included; a damaged one, or a set without its first volume, is named with why and
    the rest of the folder builds."""
    folder = tmp_path / "资料"
    (folder / "2023").mkdir(parents=True)
    (folder / "说明.txt").write_text(TRAVEL, encoding="utf-8")
    _zip(folder / "2023" / "制度.zip", {"请假.txt": LEAVE.encode()})
    _rar4_set(folder, ["汇编.part1.rar", "汇编.part2.rar"], {"章程.txt": LEAVE.encode() * 20})
    _rar4_set(tmp_path, ["残.part1.rar", "残.part2.rar"], {"a.txt": LEAVE.encode() * 20})
    (folder / "残.part2.rar").write_bytes((tmp_path / "残.part2.rar").read_bytes())  # its first volume is not there
    (folder / "坏.zip").write_bytes(b"PK\x03\x04 cut")
    (folder / "setup.exe").write_bytes(b"MZ")
    kb = ["--kb", "folder", "--kb-root", str(tmp_path / "kbs"), "--embedding", "none"]
    assert main(["build", str(folder), *kb]) == 0
    out, err = capsys.readouterr()
    assert "; 1 file of other types skipped; 2 archives inside not read" in out
    assert "残.part2.rar is volume 2 of a multi-volume archive whose first volume (残.part1.rar) was not given" in err
    assert "坏.zip (damaged, or a document package named .zip)" in err and "(setup.exe)" in err
    assert main(["list", *kb[:4], "--json"]) == 0
    sources = sorted(d["source"] for d in json.loads(capsys.readouterr().out))
    root = folder.resolve()
    assert sources == [f"{root}/2023/制度.zip/请假.txt", f"{root}/汇编.part1.rar/章程.txt", f"{root}/说明.txt"]


@needs_libarchive
def test_a_damaged_stored_rar4_member_is_refused_not_built_garbled(tmp_path: Path) -> None:
    """Regression: libarchive hands out a RAR 4 member stored without compression without checking
    its CRC, so a flipped byte built garbled text (a fuzz of 272 mutated archives libarchive read: 270
    with wrong bytes, no error). The CRC the archive records is checked now (``kb.loaders.rar4_crc``):
    one line for an archive given, named and skipped inside another."""
    from kb.loaders.rar4_crc import file_members

    archive = _rar4(tmp_path / "资料.rar", {"制度/请假.txt": LEAVE.encode() * 10, "b.md": b"# x\n"})
    assert [m.size for m in file_members(archive) or []] == [len(LEAVE.encode()) * 10, 4]
    data = bytearray(archive.read_bytes())
    data[data.index("病假".encode())] ^= 0x20
    archive.write_bytes(bytes(data))
    damaged = r"^资料.rar is a damaged RAR archive \(制度/请假.txt: its bytes do not match the CRC the archive records\)$"
    unread = _refused_alone_and_named_inside(tmp_path, archive, damaged)
    assert unread.startswith("资料.rar is a damaged")
    assert file_members(tmp_path / "outer.zip") is None  # not RAR 4: nothing to check, libarchive decides


@needs_libarchive
def test_a_damaged_stored_member_of_a_rar4_set_is_refused_not_built_garbled(tmp_path: Path) -> None:
    """Regression: the CRC check above covered single archives only, so a flipped byte in a stored
    member of a set of volumes still built garbled text. A member split over volumes is checked whole
    against the CRC its last part records; the parts' own CRCs do not stand for it."""
    from kb.loaders.rar4_crc import set_members

    members = {"制度/请假.txt": LEAVE.encode() * 30, "b.md": b"# x\n"}
    parts = _rar4_set(tmp_path, ["资料.part1.rar", "资料.part2.rar", "资料.part3.rar"], members)
    checked = set_members(parts)
    assert checked is not None and [(m.size, m.stored_crc is not None) for m in checked] == [
        (len(LEAVE.encode()) * 30, True), (4, True)]
    (tmp_path / "into").mkdir()
    found = unpack_documents(parts[0], tmp_path / "into", volumes=parts[1:])  # intact: read, checked, equal
    assert {inside: file.read_bytes() for file, inside in found.files} == members
    data = bytearray(parts[1].read_bytes())
    data[data.index("病假".encode())] ^= 0x20
    parts[1].write_bytes(bytes(data))
    (tmp_path / "into2").mkdir()
    with pytest.raises(DocumentLoadError, match=r"^资料.part1.rar is a damaged RAR archive \(制度/请假.txt: its bytes"):
        unpack_documents(parts[0], tmp_path / "into2", volumes=parts[1:])


def test_a_zip64_end_record_with_its_disk_fields_at_0xffff_is_not_a_split_piece(tmp_path: Path) -> None:
    """A ZIP64 writer may set the end record's disk numbers to 0xFFFF ("see the ZIP64 record"): read
    as "a disk after the first", a whole archive would be refused as a piece of a split ZIP."""
    from kb.loaders.archive_ends import split_zip_piece

    path = tmp_path / "资料.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("a.txt", "曹操")
    data = bytearray(path.read_bytes())
    end = data.rfind(b"PK\x05\x06")
    data[end + 4:end + 8] = b"\xff\xff\xff\xff"  # this disk, the directory's disk
    path.write_bytes(bytes(data))
    assert split_zip_piece(path) is None
    data[end + 4:end + 6] = b"\x02\x00"  # the third piece of a zip -s set
    path.write_bytes(bytes(data))
    assert split_zip_piece(path) is not None


def test_only_a_zip_or_a_zip_s_piece_has_its_tail_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """5219435 read the last 64 KB of every document ``detect_format`` was given, to look for a split
    ZIP's end record; a file neither named as a ZIP piece nor starting with the split marker is not
    one, and is told so from its name and first bytes."""
    import kb.loaders.archive_ends as archive_ends

    def no_tail(pieces: object, **kwargs: object) -> bytes:
        raise AssertionError("tail read")

    text = tmp_path / "三国.txt"
    text.write_text("曹操" * 50000, encoding="utf-8")
    monkeypatch.setattr(archive_ends, "_tail", no_tail)
    assert archive_ends.split_zip_piece(text) is None
