"""Folders and archives given where documents are expected (``ingest build docs/ 资料.zip``).

- A folder: every file under it, recursively and in name order, whose suffix a loader reads
  (``SUPPORTED_SUFFIXES``); hidden files and folders (``.git``, ``.DS_Store``) and Office's
  ``~$`` lock files are passed over.
- A ZIP archive of files (not a DOCX/EPUB/... package), a tar archive (plain, .gz, .bz2, .xz), a
  7z or RAR archive: its documents and those of the archives inside it, unpacked into a folder the
  caller owns for the build (:mod:`kb.loaders.archives`; the CLI and the upload unpack beside the
  knowledge bases, :mod:`kb.unpacking`), recorded as ``资料.zip/制度/请假.docx``.
  A multi-volume RAR set (``资料.part1.rar``, ``资料.part2.rar``, ...) is read once, as its first
  volume (:mod:`kb.loaders.volumes`).

Archives in a folder are read as if given (one that cannot be read is named, and the rest
builds). Files of other types are named, not read: a folder of mixed files builds what it can and
says what it left. The CLI and the web upload both expand through :func:`expand_documents`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from configs.errors import one_line
from kb.errors import DocumentLoadError
from kb.loaders.archives import unpack_documents, why_not_an_archive
from kb.loaders.sniff import ARCHIVE_SUFFIXES, SUPPORTED_SUFFIXES, archive_kind, check_regular_file, is_archive
from kb.loaders.volumes import gather_volumes, volume_of


@dataclass
class DocumentFiles:
    """The files to read with the source each is recorded under, the files of other types
    skipped, and the archives inside archives that were not read ("path (why)")."""

    files: list[Path] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)

    def add(self, file: Path, source: str) -> None:
        self.files.append(file)
        self.sources.append(source)

    def skipped_note(self) -> str | None:
        """``not_read_note`` of what was found."""
        return not_read_note(self.skipped, self.unread)


def not_read_note(skipped: list[str], unread: list[str]) -> str | None:
    """One line naming what the folders and archives given held that was not read (None:
    nothing): files of other types, then archives inside that were damaged, locked, empty or too
    deep, each with why. The CLI prints it as a note, the web page under its status line."""
    parts = []
    if skipped:
        count = len(skipped)
        parts.append(f"skipped {count} file{'s' if count > 1 else ''} of other types in the folders and archives "
                     f"given ({_first(skipped, 3, ', ')})")
    if unread:
        count = len(unread)
        parts.append(f"did not read {count} archive{'s' if count > 1 else ''} inside ({_first(unread, 3, '; ')})")
    return "; ".join(parts) or None


def expand_documents(
    paths: Sequence[str | os.PathLike[str]], *, source: Callable[[Path], str], unpack_into: Path
) -> DocumentFiles:
    """``paths`` with each folder replaced by the documents under it and each archive by its
    documents (unpacked under ``unpack_into``); a file stays as given. ``source(path)`` is how a
    file given or found in a folder is recorded; an archive's documents are recorded under its
    source plus their path inside. Archives found in a folder are read too; one that cannot be
    (damaged, locked, a volume missing) is named in ``unread`` and the rest builds, while one
    given is a DocumentLoadError (one line), as is a folder or archive without a document."""
    found = DocumentFiles()
    given: list[Path] = []
    in_folders: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            documents, archives, others = folder_contents(path)
            for document in documents:
                found.add(document, source(document))
            in_folders += archives
            found.skipped += [str(other.relative_to(path)) for other in others]
        else:
            given.append(path)
    folders = iter(unpack_into / str(n) for n in range(len(given) + len(in_folders)))
    sets = gather_volumes(given)  # a set of volumes stands as its first volume
    for path in sets.paths:
        check_regular_file(path)
        kind = archive_kind(path)
        if path in sets.volumes or kind is not None:
            _add_archive(found, path, next(folders), source=source, kind=kind, volumes=sets.volumes.get(path))
        else:
            found.add(path, source(path))
    _add_folder_archives(found, in_folders, folders, source=source)
    return found


def _add_folder_archives(found: DocumentFiles, archives: list[Path], folders: Iterator[Path], *,
                         source: Callable[[Path], str]) -> None:
    """The documents of the archives found in folders, each unpacked into the next of ``folders``;
    one that cannot be read (a zip bomb, damaged, a volume missing, named as an archive but none)
    is named in ``found.unread`` and the rest builds."""
    for parent in dict.fromkeys(p.parent for p in archives):  # a set's volumes lie in one folder
        sets = gather_volumes([p for p in archives if p.parent == parent], unread=found.unread)
        for path in sets.paths:
            kind = archive_kind(path)
            if path not in sets.volumes and kind is None:
                found.unread.append(f"{path.name} ({why_not_an_archive(path)})")
                continue
            try:
                _add_archive(found, path, next(folders), source=source, kind=kind, volumes=sets.volumes.get(path))
            except DocumentLoadError as e:
                found.unread.append(one_line(e))


def _add_archive(found: DocumentFiles, path: Path, folder: Path, *, source: Callable[[Path], str],
                 kind: str | None, volumes: list[Path] | None) -> None:
    """The documents of the archive at ``path`` (of ``kind``, ``archive_kind``; with ``volumes``:
    the first of a set of volumes), unpacked into ``folder`` (made here), each recorded under the
    archive's source plus its path inside."""
    folder.mkdir(parents=True)
    unpacked = unpack_documents(path, folder, kind=kind, volumes=volumes)
    for file, inside in unpacked.files:
        found.add(file, f"{source(path)}/{inside}")
    found.skipped += [f"{path.name}/{inside}" for inside in unpacked.skipped]
    found.unread += [f"{path.name}/{why}" for why in unpacked.unread]


def folder_contents(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """The readable files under ``folder`` (recursively, sorted), the archives among the others
    (by content; volumes of a set by name), and the other visible files; DocumentLoadError when
    there is neither a readable file nor an archive."""
    documents: list[Path] = []
    archives: list[Path] = []
    others: list[Path] = []
    for root, dirs, names in os.walk(folder, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith((".", "~$")):
                continue
            path = Path(root, name)
            if path.suffix.lower() in SUPPORTED_SUFFIXES:
                documents.append(path)
            elif path.is_file() and (path.suffix.lower() in ARCHIVE_SUFFIXES or volume_of(path) is not None
                                     or is_archive(path)):  # by name first; a renamed one by its bytes
                archives.append(path)  # one named as an archive that is none is named with why when read
            else:
                others.append(path)
    if not documents and not archives:
        raise DocumentLoadError(
            f"no documents in the folder {folder} (looked for {', '.join(SUPPORTED_SUFFIXES)} and archives"
            f"{f'; found {len(others)} files of other types' if others else ''})"
        )
    return documents, archives, others


def _first(items: list[str], count: int, separator: str) -> str:
    return separator.join(items[:count]) + (f"{separator}..." if len(items) > count else "")


def _raise(error: OSError) -> None:
    raise DocumentLoadError(f"cannot read the folder {error.filename}: {error.strerror or error}") from error
