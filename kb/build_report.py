"""``BuildReport``: what one add or remove did to a knowledge base, and its one-line summary
(``ingest build``'s last line, the web page's status line)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BuildReport:
    """What an add or remove did to a knowledge base."""

    files: int = 0
    added: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    chunks_added: int = 0
    chunks_skipped: int = 0
    chunks_removed: int = 0
    chunks_embedded: int = 0
    """Existing chunks given vectors (a keyword-only knowledge base gaining an embedding model)."""
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    """Files of other types in the folders and archives given, not read (``kb.loaders.folders``)."""
    unread: list[str] = field(default_factory=list)
    """Archives inside the archives given that were not read: damaged, locked, empty, too deep."""

    def summary(self) -> str:
        """One line for the CLI."""
        line = (
            f"files: {self.files} ({len(self.added)} added, {len(self.replaced)} replaced, "
            f"{len(self.unchanged)} unchanged, {len(self.removed)} removed); "
            f"chunks: {self.chunks_added} added, {self.chunks_skipped} skipped, "
            f"{self.chunks_removed} removed; {self.seconds:.1f} s"
        )
        if self.skipped:
            line += f"; {len(self.skipped)} file{'s' if len(self.skipped) > 1 else ''} of other types skipped"
        if self.unread:
            line += f"; {len(self.unread)} archive{'s' if len(self.unread) > 1 else ''} inside not read"
        return f"{line}; vectors added to {self.chunks_embedded} existing chunks" if self.chunks_embedded else line
