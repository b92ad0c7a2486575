"""A ZIP archive of documents (资料.zip) given to a build: its documents, unpacked for the build.

- Only an archive of files: DOCX, PPTX, XLSX, EPUB and OpenDocument are ZIP packages too and
  stay documents (:func:`kb.loaders.sniff.is_archive`).
- Checked against zip bombs (:func:`kb.loaders.sniff.check_archive`: members, total size,
  compression ratio) before anything is unpacked.
- Member names: UTF-8 where the archive says so, else GB18030 (zip tools on Chinese Windows
  write names in the system code page, which Python would show as cp437 mojibake).
- Each member is written under a generated name (its suffix kept) in a folder the caller owns,
  never under its own path: a member named ``../../etc/x`` cannot land outside it.
- Hidden files, macOS's ``__MACOSX`` copies and Office's ``~$`` lock files are passed over;
  members of types no loader reads are skipped and named.

Each document is recorded as ``<archive's source>/<path inside>``: a rebuild of the same archive
skips the members that did not change, and each member is cited and removed on its own.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kb.errors import DocumentLoadError
from kb.loaders.sniff import DAMAGED_ZIP, SUPPORTED_SUFFIXES, check_archive, read_member

UTF8_FLAG = 0x800  # general purpose bit 11: the name is UTF-8


@dataclass
class ArchiveDocuments:
    """The documents of one archive, unpacked: ``(file, path inside)`` pairs in name order."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def unpack_documents(path: Path, into: Path) -> ArchiveDocuments:
    """Unpack the documents of the archive at ``path`` into the folder ``into`` (which must
    exist); DocumentLoadError (one line) for a damaged or hostile archive or one without a
    document."""
    found = ArchiveDocuments()
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, name=path.name)
            members = sorted(((member_name(info), info) for info in archive.infolist() if not info.is_dir()),
                             key=lambda pair: pair[0])
            for number, (name, info) in enumerate(members):
                if _left_over(name):
                    continue
                if PurePosixPath(name).suffix.lower() not in SUPPORTED_SUFFIXES:
                    found.skipped.append(name)
                    continue
                target = into / f"{number:05d}{PurePosixPath(name).suffix.lower()}"
                target.write_bytes(read_member(archive, info.filename, name=path.name))
                found.files.append((target, name))
    except DAMAGED_ZIP as e:
        raise DocumentLoadError(f"{path.name} is a damaged ZIP archive ({e})") from e
    if not found.files:
        others = f"; it holds {len(found.skipped)} files of other types" if found.skipped else ""
        raise DocumentLoadError(f"no documents in the archive {path.name} (looked for {', '.join(SUPPORTED_SUFFIXES)}{others})")
    return found


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's path as its author wrote it: UTF-8 when flagged, else GB18030 where the raw
    bytes are that (cp437, zipfile's reading, otherwise); ``/``-separated, without ``.``/``..``."""
    name = info.filename
    if not info.flag_bits & UTF8_FLAG:
        try:
            name = name.encode("cp437").decode("gb18030")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return "/".join(part for part in name.replace("\\", "/").split("/") if part not in ("", ".", ".."))


def _left_over(name: str) -> bool:
    """A file nobody meant to archive: hidden (``.DS_Store``), macOS's ``__MACOSX`` copies of
    resource forks, Office's ``~$`` lock files."""
    parts = PurePosixPath(name).parts
    return not parts or parts[-1].startswith("~$") or any(p.startswith(".") or p == "__MACOSX" for p in parts)
