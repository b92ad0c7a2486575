"""An archive of documents (资料.zip, 资料.tar.gz) given to a build: its documents, unpacked for the build.

- Only an archive of files: DOCX, PPTX, XLSX, EPUB and OpenDocument are ZIP packages too and
  stay documents (:func:`kb.loaders.sniff.is_archive`). Tar archives may be plain or compressed
  with gzip, bzip2 or xz (Python's own ``tarfile``).
- Checked against zip bombs (:func:`kb.loaders.sniff.check_archive`: members, total size,
  compression ratio) before anything is unpacked. A compressed tar stream lists its members only
  as it is read, so there the same limits on members and total size are checked member by member,
  before each is unpacked.
- Member names: UTF-8 where the archive says so, else GB18030 (zip tools on Chinese Windows
  write names in the system code page, which Python would show as cp437 mojibake; tar names
  that are not UTF-8 are read as GB18030 too).
- Only regular files: links, devices and folders in a tar archive are passed over.
- Each member is written under a generated name (its suffix kept) in a folder the caller owns,
  never under its own path: a member named ``../../etc/x`` cannot land outside it.
- Hidden files, macOS's ``__MACOSX`` copies and Office's ``~$`` lock files are passed over;
  members of types no loader reads are skipped and named.

Each document is recorded as ``<archive's source>/<path inside>``: a rebuild of the same archive
skips the members that did not change, and each member is cited and removed on its own.
"""

from __future__ import annotations

import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from configs.errors import one_line
from kb.errors import DocumentLoadError
from kb.loaders.sniff import (
    DAMAGED_TAR,
    DAMAGED_ZIP,
    SUPPORTED_SUFFIXES,
    TAR_SUFFIXES,
    check_archive,
    check_unpack_limits,
    read_member,
)

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
    found = _unpack_tar(path, into) if path.suffix.lower() in TAR_SUFFIXES else _unpack_zip(path, into)
    if not found.files:
        others = f"; it holds {len(found.skipped)} files of other types" if found.skipped else ""
        raise DocumentLoadError(f"no documents in the archive {path.name} (looked for {', '.join(SUPPORTED_SUFFIXES)}{others})")
    return found


def _unpack_zip(path: Path, into: Path) -> ArchiveDocuments:
    found = ArchiveDocuments()
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, name=path.name)
            members = sorted(((member_name(info), info) for info in archive.infolist() if not info.is_dir()),
                             key=lambda pair: pair[0])
            for number, (name, info) in enumerate(members):
                target = _target(found, into, number, name)
                if target is not None:
                    target.write_bytes(read_member(archive, info.filename, name=path.name))
                    found.files.append((target, name))
    except DAMAGED_ZIP as e:
        raise DocumentLoadError(f"{path.name} is a damaged ZIP archive ({e})") from e
    return found


def _unpack_tar(path: Path, into: Path) -> ArchiveDocuments:
    """``unpack_documents`` of a tar archive: each regular file checked against the limits as the
    stream reaches it, then copied out; the documents sorted by name at the end."""
    found = ArchiveDocuments()
    members = total = 0
    try:
        with tarfile.open(path, "r:*", encoding="utf-8", errors="surrogateescape") as archive:
            for info in archive:
                members += 1
                total += info.size if info.isfile() else 0
                check_unpack_limits(path.name, members=members, total=total, so_far=True)
                if not info.isfile():
                    continue
                name = tar_member_name(info)
                target = _target(found, into, members, name)
                if target is not None:
                    with archive.extractfile(info) as member, target.open("wb") as out:  # type: ignore[union-attr]
                        shutil.copyfileobj(member, out)
                    found.files.append((target, name))
    except DAMAGED_TAR as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # the disk (full, not writable), not the archive: decompressors' errors carry no errno
        raise DocumentLoadError(f"{path.name} is a damaged tar archive ({one_line(e)})") from e
    found.files.sort(key=lambda pair: pair[1])
    return found


def _target(found: ArchiveDocuments, into: Path, number: int, name: str) -> Path | None:
    """Where member ``name`` is unpacked (a generated name, its suffix kept), or None where it
    is not read: left over (``_left_over``) or of a type no loader reads (then named in
    ``found.skipped``)."""
    if _left_over(name):
        return None
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        found.skipped.append(name)
        return None
    return into / f"{number:05d}{suffix}"


def tar_member_name(info: tarfile.TarInfo) -> str:
    """A tar member's path: UTF-8, else GB18030 where its raw bytes are that; ``/``-separated,
    without ``.``/``..`` (as ``member_name``)."""
    name = info.name
    raw = name.encode("utf-8", "surrogateescape")
    if raw != name.encode("utf-8", "replace"):  # not UTF-8: surrogates stand for the raw bytes
        name = raw.decode("gb18030", "replace")
    return _clean_path(name)


def member_name(info: zipfile.ZipInfo) -> str:
    """The member's path as its author wrote it: UTF-8 when flagged, else GB18030 where the raw
    bytes are that (cp437, zipfile's reading, otherwise); ``/``-separated, without ``.``/``..``."""
    name = info.filename
    if not info.flag_bits & UTF8_FLAG:
        try:
            name = name.encode("cp437").decode("gb18030")
        except (UnicodeEncodeError, UnicodeDecodeError):
            pass
    return _clean_path(name)


def _clean_path(name: str) -> str:
    return "/".join(part for part in name.replace("\\", "/").split("/") if part not in ("", ".", ".."))


def _left_over(name: str) -> bool:
    """A file nobody meant to archive: hidden (``.DS_Store``), macOS's ``__MACOSX`` copies of
    resource forks, Office's ``~$`` lock files."""
    parts = PurePosixPath(name).parts
    return not parts or parts[-1].startswith("~$") or any(p.startswith(".") or p == "__MACOSX" for p in parts)
