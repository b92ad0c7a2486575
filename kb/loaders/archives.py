"""An archive of documents (资料.zip, 资料.tar.gz, 资料.rar) given to a build: its documents, unpacked.

- Only an archive of files: DOCX, PPTX, XLSX, EPUB and OpenDocument are ZIP packages too and
  stay documents (:func:`kb.loaders.sniff.is_archive`). Tar archives may be plain or compressed
  with gzip, bzip2 or xz (Python's own ``tarfile``). 7z and RAR archives are read through
  libarchive (libarchive-c over the system library), where it is installed; their limits are
  counted on the bytes as they stream out.
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
- Archives inside are read too (``MAX_NESTING`` levels deep), their documents recorded under the
  inner archive's path (``资料.zip/2023.zip/制度/请假.txt``). The zip-bomb limits count every level
  together; a damaged, locked or empty archive inside is named with why (``unread``), and the rest
  still builds.
- An archive cut short where a member starts (a partial download), which its reader would take
  for a whole, smaller one, is refused: a RAR or plain tar without its end record after the
  members (:mod:`kb.loaders.archive_ends`; a set of volumes: :mod:`kb.loaders.volumes`).
- Which reader an archive gets is decided by its bytes (:func:`kb.loaders.sniff.archive_kind`),
  not its name: a ZIP renamed 资料.rar is read as a ZIP.

Each document is recorded as ``<archive's source>/<path inside>``: a rebuild of the same archive
skips the members that did not change, and each member is cited and removed on its own.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from configs.errors import one_line
from kb.errors import DocumentLoadError
from kb.loaders.archive_ends import cut_short, split_zip_piece, tar_cut_short
from kb.loaders.libarchive_warnings import ChecksumMismatch, watched
from kb.loaders.rar4_crc import Member, file_members, set_members
from kb.loaders.volumes import gather_volumes, may_be_a_volume
from kb.loaders.sniff import (
    ARCHIVE_SUFFIXES,
    DAMAGED_TAR,
    DAMAGED_ZIP,
    LIBARCHIVE_MAGIC,
    SUPPORTED_SUFFIXES,
    TAR_SUFFIXES,
    ArchiveRefused,
    check_archive,
    check_unpack_limits,
    archive_kind,
    magic_archive_kind,
    password_protected,
    read_member,
)

UTF8_FLAG = 0x800  # general purpose bit 11: the name is UTF-8
# What to do with an archive cut short (``kb.loaders.archive_ends``: no end record after its members).
_GET_IT_WHOLE = "a partial download? get the whole file again, or unpack it and give the folder"
MAX_NESTING = 3  # archives inside archives, below the one given: deeper ones are skipped and named


@dataclass
class ArchiveDocuments:
    """The documents of one archive, unpacked: ``(file, path inside)`` pairs in name order; the
    members of types no loader reads (``skipped``: paths inside) and the archives inside that were
    not read (``unread``: "path inside (why)")."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)


@dataclass
class _Unpacking:
    """One ``unpack_documents`` call: what it found, the archives inside still to unpack, and the
    members and bytes unpacked so far over every nested archive (the zip-bomb limits hold for the
    whole tree, not per archive: ten nested archives of 500 MiB are 5 GiB)."""

    outer: str
    found: ArchiveDocuments = field(default_factory=ArchiveDocuments)
    nested: list[tuple[Path, str]] = field(default_factory=list)
    set_folders: dict[tuple[Path, str], Path] = field(default_factory=dict)  # (folder, dir inside) -> volumes
    members: int = 0
    total: int = 0

    def count(self, *, members: int, total: int) -> None:
        """Add to the counts and refuse the whole tree past the limits (``ArchiveRefused``)."""
        self.members += members
        self.total += total
        check_unpack_limits(self.outer, members=self.members, total=self.total, so_far=True)


def unpack_documents(path: Path, into: Path, *, kind: str | None = None,
                     volumes: Sequence[Path] | None = None) -> ArchiveDocuments:
    """Unpack the documents of the archive at ``path`` into the folder ``into`` (which must
    exist), and those of the archives inside it, ``MAX_NESTING`` deep (recorded as
    ``2023.zip/制度/请假.txt``); DocumentLoadError (one line) for a damaged or hostile archive or
    one without a document. A damaged, locked or empty archive inside is skipped and named; a hostile
    one (``ArchiveRefused``) refuses the whole archive. ``kind``: ``archive_kind(path)`` where the
    caller has it already. ``volumes``: ``path`` is the first volume of a set (``资料.part1.rar``,
    ``资料.7z.001``), these the later ones in order (``kb.loaders.volumes``)."""
    state = _Unpacking(outer=path.name)
    _unpack_one(path, into, state, kind=kind or archive_kind(path), prefix="", volumes=volumes)
    _unpack_nested(into, state, depth=1)
    found = state.found
    if not found.files:
        others = f"; it holds {len(found.skipped)} files of other types" if found.skipped else ""
        unread = f"; archives inside not read: {'; '.join(found.unread)}" if found.unread else ""
        raise DocumentLoadError(
            f"no documents in the archive {path.name} (looked for {', '.join(SUPPORTED_SUFFIXES)}{others}{unread})")
    found.files.sort(key=lambda pair: pair[1])
    return found


def _unpack_one(path: Path, into: Path, state: _Unpacking, *, kind: str | None, prefix: str,
                volumes: Sequence[Path] | None = None) -> None:
    """The documents of one archive of ``kind`` (``archive_kind``; None: as its name says) into
    ``into``, its archives into ``state.nested``; each recorded under ``prefix`` + its path inside."""
    suffix = path.suffix.lower()
    if volumes is not None:  # a set of volumes: libarchive reads them as one stream, whatever the format
        kind = kind or magic_archive_kind(path) or suffix.lstrip(".")
        _unpack_libarchive(path, into, state, kind=kind.upper(), prefix=prefix, volumes=volumes)
    elif kind == "tar" or (kind is None and suffix in TAR_SUFFIXES):
        _unpack_tar(path, into, state, prefix=prefix)
    elif kind in ("7z", "rar") or (kind is None and suffix in LIBARCHIVE_MAGIC):
        _unpack_libarchive(path, into, state, kind=(kind or suffix.lstrip(".")).upper(), prefix=prefix)
    else:
        _unpack_zip(path, into, state, prefix=prefix)


def _unpack_nested(into: Path, state: _Unpacking, *, depth: int) -> None:
    """Unpack the archives found inside, level by level, each into its own folder (a set of
    volumes inside, such as ``资料.part1.rar`` ... or ``资料.7z.001`` ..., read once as its first
    volume); the copy of each archive is deleted once it is read."""
    level, state.nested = state.nested, []
    unread = state.found.unread
    try:
        for number, (file, name, volumes) in enumerate(_gather_nested_sets(level, unread)):
            if depth > MAX_NESTING:
                unread.append(f"{name} (an archive nested more than {MAX_NESTING} deep)")
            elif (kind := archive_kind(file)) is None:
                unread.append(f"{name} ({why_not_an_archive(file, shown=name)})")
            else:
                folder = into / f"{depth}-{number:05d}"
                folder.mkdir()
                _unpack_inner(file, folder, state, kind=kind, name=name, volumes=volumes)
    finally:
        for file, _ in level:
            file.unlink(missing_ok=True)
    if state.nested:
        _unpack_nested(into, state, depth=depth + 1)


def _gather_nested_sets(level: list[tuple[Path, str]], unread: list[str]
                        ) -> list[tuple[Path, str, list[Path] | None]]:
    """``(file, path inside, later volumes)`` for each archive of ``level``: the volumes of a set
    (written under their own names, one folder per folder inside: ``_target``) gathered into its
    first; a set without its first volume, or with a gap, named in ``unread``."""
    names = {file: name for file, name in level}
    out: list[tuple[Path, str, list[Path] | None]] = []
    for folder in dict.fromkeys(file.parent for file, _ in level):  # sets of the same name in two folders
        sets = gather_volumes([file for file, _ in level if file.parent == folder], unread=unread)
        out += [(file, names[file], sets.volumes.get(file)) for file in sets.paths]
    return out


def _unpack_inner(file: Path, folder: Path, state: _Unpacking, *, kind: str, name: str,
                  volumes: list[Path] | None) -> None:
    """``_unpack_one`` of an archive inside; where it is damaged or locked, what it gave is
    forgotten and it is named in ``unread`` (the other documents still build)."""
    files, nested = len(state.found.files), len(state.nested)
    try:
        _unpack_one(file, folder, state, kind=kind, prefix=f"{name}/", volumes=volumes)
    except ArchiveRefused:
        raise
    except DocumentLoadError as e:
        del state.found.files[files:], state.nested[nested:]
        why = one_line(e)  # it names the archive by its path inside (``_shown``)
        state.found.unread.append(why if why.startswith(name) else f"{name} ({why})")
    else:
        if (len(state.found.files), len(state.nested)) == (files, nested):
            state.found.unread.append(f"{name} (no documents)")


def why_not_an_archive(file: Path, *, shown: str | None = None) -> str:
    """Why a file named as an archive (a member, or a file in a folder given) is not read as one (``shown``: the
    name it goes by, where ``file`` is a copy under a generated one)."""
    suffix = file.suffix.lower()
    if not file.stat().st_size:
        return "empty"
    if (piece := split_zip_piece(file, shown=shown)) is not None:
        return piece
    if suffix == ".zip":
        return "damaged, or a document package named .zip"
    if suffix in LIBARCHIVE_MAGIC:
        return f"damaged, or not a {suffix.lstrip('.').upper()} archive"
    return "one compressed file, not an archive: unpack it"


def _unpack_zip(path: Path, into: Path, state: _Unpacking, *, prefix: str) -> None:
    shown = _shown(path, prefix)
    try:
        with zipfile.ZipFile(path) as archive:
            check_archive(archive, name=shown)
            infos = [info for info in archive.infolist() if not info.is_dir()]
            state.count(members=len(infos), total=sum(info.file_size for info in infos))
            members = sorted(((member_name(info), info) for info in infos), key=lambda pair: pair[0])
            for number, (name, info) in enumerate(members):
                target = _target(state, into, number, name, prefix=prefix)
                if target is not None:
                    target.write_bytes(read_member(archive, info.filename, name=shown))
    except DAMAGED_ZIP as e:
        raise DocumentLoadError(f"{shown} is a damaged ZIP archive ({e})") from e


def _unpack_tar(path: Path, into: Path, state: _Unpacking, *, prefix: str) -> None:
    """``_unpack_one`` of a tar archive: each regular file checked against the limits as the
    stream reaches it, then copied out."""
    last = None
    try:
        with tarfile.open(path, "r:*", encoding="utf-8", errors="surrogateescape") as archive:
            for number, info in enumerate(archive):
                last = info
                state.count(members=1, total=info.size if info.isfile() else 0)
                if not info.isfile():
                    continue
                target = _target(state, into, number, tar_member_name(info), prefix=prefix)
                if target is not None:
                    with archive.extractfile(info) as member, target.open("wb") as out:  # type: ignore[union-attr]
                        shutil.copyfileobj(member, out)
            members_end = archive.offset
        if last is not None and tar_cut_short(path, members_end=members_end):
            raise DocumentLoadError(f"{_shown(path, prefix)} is a damaged tar archive (cut short, or damaged, after "
                                    f"{tar_member_name(last)}: no end-of-archive block follows it, so the members "
                                    f"after it are missing; {_GET_IT_WHOLE})")
    except DAMAGED_TAR as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # the disk (full, not writable), not the archive: decompressors' errors carry no errno
        raise DocumentLoadError(f"{_shown(path, prefix)} is a damaged tar archive ({one_line(e)})") from e


def _unpack_libarchive(path: Path, into: Path, state: _Unpacking, *, kind: str, prefix: str,
                       volumes: Sequence[Path] | None = None) -> None:
    """``_unpack_one`` of a 7z or RAR archive (``kind``: "7Z", "RAR"; with ``volumes``, a set of
    volumes of any of them or of a ZIP), through libarchive: regular files only, the limits checked
    on the bytes as they stream out (a header's declared size is not trusted)."""
    shown = _shown(path, prefix)
    if volumes is None and cut_short([path]):  # a set's pieces are checked as a whole (kb.loaders.volumes)
        raise DocumentLoadError(f"{shown} is a damaged {kind} archive (cut short: it does not end with the {kind} "
                                f"end record, so the members after the cut are missing; {_GET_IT_WHOLE})")
    libarchive = _libarchive(shown, kind)
    headers = None if kind != "RAR" else file_members(path) if volumes is None else set_members([path, *volumes])
    try:
        with watched(shown) as watch, _open_volumes(libarchive, [path, *(volumes or ())]) as archive:
            files = -1  # the entry's place among the non-folder entries, as rar4_crc counts them
            for number, entry in enumerate(archive):
                state.count(members=1, total=0)
                files += not entry.isdir
                if not entry.isfile:
                    continue
                if _encrypted(libarchive, entry):
                    raise DocumentLoadError(password_protected(f"{shown} is password-protected"))
                name = _libarchive_name(entry.pathname)
                target = _target(state, into, number, name, prefix=prefix)
                if target is not None and _copy_member(entry, target, state, crc=_stored_crc(headers, files, entry)):
                    raise DocumentLoadError(f"{shown} is a damaged {kind} archive ({name}: its bytes do not match "
                                            "the CRC the archive records)")
                watch.check()
            watch.check()
    except ChecksumMismatch as e:
        raise DocumentLoadError(f"{shown} is a damaged {kind} archive ({one_line(e)})") from e
    except libarchive.ArchiveError as e:
        why = one_line(e)
        if "passphrase" in why.lower() or "encrypt" in why.lower():  # 7z with encrypted headers, RAR 5
            raise DocumentLoadError(password_protected(f"{shown} is password-protected")) from e
        if volumes is not None:  # most often the set ends before its last volume
            raise DocumentLoadError(
                f"{shown} is a multi-volume {kind} archive that cannot be read to its end ({why}); the volumes "
                f"found end at volume {len(volumes) + 1} ({[path, *volumes][-1].name}): give all of them together"
            ) from e
        raise DocumentLoadError(f"{shown} is a damaged {kind} archive ({why})") from e


def _copy_member(entry: Any, target: Path, state: _Unpacking, *, crc: int | None) -> bool:
    """Stream a libarchive entry into ``target``, its bytes counted against the limits; True where
    ``crc`` is given and the bytes do not have it."""
    got = 0
    with target.open("wb") as out:
        for block in entry.get_blocks():
            state.count(members=0, total=len(block))
            out.write(block)
            if crc is not None:
                got = zlib.crc32(block, got)
    return crc is not None and got != crc


def _stored_crc(headers: list[Member] | None, files: int, entry: Any) -> int | None:
    """The CRC the archive records for a RAR 4 member stored without compression (which libarchive
    does not check), where the entry matches its header by place and size; else None."""
    if headers is None or not 0 <= files < len(headers) or headers[files].size != entry.size:
        return None
    return headers[files].stored_crc


@contextmanager
def _open_volumes(libarchive: Any, files: list[Path]) -> Iterator[Any]:
    """libarchive's reader over ``files``: one archive, or the volumes of one in order (through
    ``archive_read_open_filenames``, which libarchive-c does not wrap; libarchive reads a RAR set's
    volumes as one stream)."""
    if len(files) == 1:
        with libarchive.file_reader(str(files[0])) as archive:
            yield archive
        return
    from libarchive.read import ArchiveRead, new_archive_read

    names = (ctypes.c_char_p * (len(files) + 1))(*(os.fsencode(f) for f in files), None)
    with new_archive_read("all", "all") as pointer:
        if _open_filenames(libarchive.ffi.libarchive)(pointer, names, 10240) != 0:
            raise libarchive.ArchiveError(f"cannot open the volumes from {files[0].name} on")
        yield ArchiveRead(pointer, "utf-8")


@cache
def _open_filenames(library: Any) -> Any:
    """libarchive's ``archive_read_open_filenames``, typed once."""
    function = library.archive_read_open_filenames
    function.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_size_t]
    function.restype = ctypes.c_int
    return function


def _libarchive(shown: str, kind: str) -> Any:
    """libarchive-c, or a one-line DocumentLoadError where it or the system's libarchive is missing."""
    try:
        import libarchive
    except (ImportError, OSError, AttributeError) as e:  # the binding, or libarchive.so it loads
        raise DocumentLoadError(
            f"{shown} is a {kind} archive, and reading {kind} needs the libarchive library (Debian/Ubuntu: "
            "apt install libarchive13; macOS: brew install libarchive); or unpack it and give the folder"
        ) from e
    return libarchive


def _encrypted(libarchive: Any, entry: Any) -> bool:
    """Whether libarchive says ``entry`` is encrypted: a RAR 4 member flagged encrypted reads out
    as its ciphertext with no error at all."""
    is_encrypted = _entry_is_encrypted(libarchive.ffi.libarchive)
    return is_encrypted is not None and bool(is_encrypted(entry._entry_p))  # libarchive-c's entry pointer


@cache
def _entry_is_encrypted(library: Any) -> Any:
    """libarchive's ``archive_entry_is_encrypted`` (3.2+; libarchive-c does not wrap it), typed
    once, or None where the library lacks it."""
    function = getattr(library, "archive_entry_is_encrypted", None)
    if function is not None:
        function.argtypes, function.restype = [ctypes.c_void_p], ctypes.c_int
    return function


def _libarchive_name(name: str | bytes) -> str:
    """A 7z/RAR member's path: libarchive's, or where it could not convert the raw bytes
    (an old RAR from Chinese Windows), those bytes read as UTF-8, else GB18030."""
    if isinstance(name, bytes):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            name = name.decode("gb18030", "replace")
    return _clean_path(name)


def _shown(path: Path, prefix: str) -> str:
    """How an archive is named in a message: its file name, or its path inside the outer one."""
    return prefix.rstrip("/") or path.name


def _target(state: _Unpacking, into: Path, number: int, name: str, *, prefix: str) -> Path | None:
    """Where member ``name`` is unpacked (a generated name, its suffix kept; one that may be a
    volume of a set, under its own name in ``_set_folder``), recorded in
    ``state`` as a document or an archive inside; None where it is not read: left over
    (``_left_over``) or of a type no loader reads (then named in ``state.found.skipped``)."""
    if _left_over(name):
        return None
    suffix = PurePosixPath(name).suffix.lower()
    target = into / f"{number:05d}{suffix}"
    if suffix in SUPPORTED_SUFFIXES:
        state.found.files.append((target, prefix + name))
    elif may_be_a_volume(name) and len(os.fsencode(PurePosixPath(name).name)) <= 200:  # under its own
        # name (not one too long for the disk), beside the other volumes of its set
        target = _set_folder(state, into, name) / PurePosixPath(name).name
        state.nested.append((target, prefix + name))
    elif suffix in ARCHIVE_SUFFIXES:
        state.nested.append((target, prefix + name))
    else:
        state.found.skipped.append(prefix + name)
        return None
    return target


def _set_folder(state: _Unpacking, into: Path, name: str) -> Path:
    """The folder where the members of one folder inside that may be volumes are written under
    their own names (``kb.loaders.volumes`` finds a set's volumes by name, side by side)."""
    key = (into, str(PurePosixPath(name).parent))
    if key not in state.set_folders:
        state.set_folders[key] = into / f"volumes-{len(state.set_folders):05d}"
        state.set_folders[key].mkdir()
    return state.set_folders[key]


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
