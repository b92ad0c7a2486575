"""A folder given where files are expected (``ingest build docs/``): the documents inside it.

Every file under the folder, recursively and in name order, whose suffix a loader reads
(``SUPPORTED_SUFFIXES``); hidden files and folders (``.git``, ``.DS_Store``) and Office's
``~$`` lock files are passed over, and files of other types are counted, not read, so a
folder of mixed files builds what it can and says what it left.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from kb.errors import DocumentLoadError
from kb.loaders.sniff import SUPPORTED_SUFFIXES


@dataclass
class FolderFiles:
    """The files to read, and the files of other types found in the folders given."""

    files: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)

    def skipped_note(self) -> str | None:
        """One line naming what the folders held that no loader reads (None: nothing)."""
        if not self.skipped:
            return None
        names = ", ".join(p.name for p in self.skipped[:3]) + (", ..." if len(self.skipped) > 3 else "")
        return (
            f"skipped {len(self.skipped)} file{'s' if len(self.skipped) > 1 else ''} of other types in the "
            f"folders given ({names})"
        )


def expand_folders(paths: list[str | os.PathLike[str]]) -> FolderFiles:
    """``paths`` with each folder replaced by the documents inside it (files stay as given, in
    order). DocumentLoadError for a folder holding no document."""
    found = FolderFiles()
    for path in map(Path, paths):
        if not path.is_dir():
            found.files.append(path)
            continue
        documents, others = documents_in_folder(path)
        if not documents:
            raise DocumentLoadError(
                f"no documents in the folder {path} (looked for {', '.join(SUPPORTED_SUFFIXES)}"
                f"{f'; found {len(others)} files of other types' if others else ''})"
            )
        found.files += documents
        found.skipped += others
    return found


def documents_in_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """The readable files under ``folder`` (recursively, sorted) and the other visible files."""
    documents: list[Path] = []
    others: list[Path] = []
    for root, dirs, names in os.walk(folder, onerror=_raise):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith((".", "~$")):
                continue
            path = Path(root, name)
            (documents if path.suffix.lower() in SUPPORTED_SUFFIXES else others).append(path)
    return documents, others


def _raise(error: OSError) -> None:
    raise DocumentLoadError(f"cannot read the folder {error.filename}: {error.strerror or error}") from error
