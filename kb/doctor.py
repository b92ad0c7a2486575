"""``ingest doctor``: say what is damaged in a knowledge base, and repair it where the data allows.

Every version folder is checked like a load does (``CURRENT``, manifest checksum and schema,
every file's SHA-256, the docstore's SQLite quick check and chunk count). Repair, under the
writer lock, in order of preference:

1. the live version's docstore is intact (it holds every document's text and chunks): a new
   version is built from it — BM25 rebuilt, vectors re-embedded (the manifest's model, or the
   kept previous version's when the live manifest is unreadable; keyword-only if neither says);
2. else the newest intact older version (builds keep the previous one) becomes live again;
3. else nothing can be saved: the message says to drop the knowledge base and build it again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kb import storage
from kb.build import VersionWriter
from kb.build_report import BuildReport
from kb.dense_store import DenseStore
from kb.docstore import Docstore
from kb.errors import DamagedKnowledgeBaseError, EmbeddingModelError, KnowledgeBaseError, KnowledgeBaseNotFound
from kb.lifecycle import no_such_kb
from kb.manifest import SPLITTER_VERSION, Manifest
from kb.version import DOCSTORE_FILE


@dataclass
class VersionCheck:
    """One version folder: what is wrong with it, and whether its text can be rebuilt from."""

    name: str
    problems: list[str] = field(default_factory=list)
    manifest: Manifest | None = None
    text_intact: bool = False

    @property
    def healthy(self) -> bool:
        return not self.problems


@dataclass
class Diagnosis:
    """What ``ingest doctor`` reports for one knowledge base."""

    name: str
    current: str | None
    problems: list[str]
    versions: list[VersionCheck]  # newest first

    @property
    def healthy(self) -> bool:
        return not self.problems

    def lines(self) -> list[str]:
        if self.healthy:
            return [f"{self.name}: healthy (version {self.current})"]
        out = [f"{self.name}: damaged"] + [f"  - {p}" for p in self.problems]
        for check in self.versions:
            state = "intact" if check.healthy else ("text intact" if check.text_intact else "damaged")
            out.append(f"  version {check.name}: {state}")
        return out


def check_version(kb_dir: Path, name: str) -> VersionCheck:
    """Every check a load makes on one version folder, collected instead of raised."""
    check = VersionCheck(name)
    version_dir = kb_dir / name
    try:
        check.manifest = storage.read_manifest(version_dir, kb_name=kb_dir.name, verify=False)
        storage.verify_files(version_dir, check.manifest.files, kb_name=kb_dir.name)
    except KnowledgeBaseError as e:
        check.problems.append(_reason(e))
    docstore_ok = (version_dir / DOCSTORE_FILE).is_file() and (
        check.manifest is None or _hash_ok(version_dir, check.manifest, DOCSTORE_FILE)
    )
    if docstore_ok:
        try:
            docstore = Docstore.open_readonly(version_dir / DOCSTORE_FILE)
        except KnowledgeBaseError as e:
            check.problems.append(_reason(e))
        else:
            with contextlib.closing(docstore):
                problem = docstore.integrity_problem()
                if problem is None and check.manifest is not None and docstore.chunk_count() != check.manifest.counts.chunks:
                    problem = "its docstore and manifest disagree on the number of chunks"
            if problem:
                check.problems.append(problem)
            check.text_intact = problem is None
    check.problems = list(dict.fromkeys(check.problems))
    return check


def diagnose(root: str | Path, name: str) -> Diagnosis:
    """Check knowledge base ``name`` under ``root`` without loading it."""
    kb_dir = Path(root).expanduser() / name
    if not kb_dir.is_dir():
        raise KnowledgeBaseNotFound(no_such_kb(kb_dir.parent, name))
    problems: list[str] = []
    try:
        current = storage.read_pointer(kb_dir)
    except KnowledgeBaseError as e:
        current = None
        problems.append(_reason(e))
    checks = [check_version(kb_dir, v) for v in reversed(storage.versions(kb_dir))]
    if current is None and not problems:
        problems.append(f"{kb_dir / storage.POINTER} is missing (no build finished)")
    elif current is not None:
        live = next((c for c in checks if c.name == current), None)
        if live is None:
            problems.append(f"version {current} named by {storage.POINTER} is missing")
        else:
            problems.extend(f"version {current}: {p}" for p in live.problems)
    return Diagnosis(name, current, problems, checks)


def repair(
    root: str | Path, name: str, *, store_for: Callable[[dict[str, Any]], DenseStore], embeddings_for: Callable[[str], Any],
    batch_size: int = 64, show_progress: bool = False,
) -> str:
    """Repair ``name`` (see the module docstring) and say what was done in one line."""
    kb_dir = Path(root).expanduser() / name
    with storage.write_lock(kb_dir):
        found = diagnose(root, name)
        if found.healthy:
            return f"{name}: healthy, nothing to repair"
        live = next((c for c in found.versions if c.name == found.current), None)
        source = live if live is not None and live.text_intact else None
        if source is None and found.current is None:  # no pointer: rebuild from the newest intact text
            source = next((c for c in found.versions if c.text_intact), None)
        older = next((c for c in found.versions if c.healthy), None)
        if source is not None:
            try:
                version = _rebuild(kb_dir, source, found, store_for, embeddings_for, batch_size, show_progress)
                return f"{name}: rebuilt version {version} from the stored text of {source.name} (search indexes made afresh)"
            except EmbeddingModelError:
                if older is None:  # the vectors cannot be made again here: say so (the model's message)
                    raise
        if older is not None:
            storage.point_at(kb_dir, older.name)
            return f"{name}: rolled back to the kept previous version {older.name} (the last build's changes are lost)"
    raise DamagedKnowledgeBaseError(
        f"knowledge base {name!r} cannot be repaired: no version keeps its text intact; "
        f"drop it (`ingest drop --kb {name}`) and build it again",
        kb_name=name,
    )


def _rebuild(
    kb_dir: Path, source: VersionCheck, found: Diagnosis, store_for: Callable[[dict[str, Any]], DenseStore],
    embeddings_for: Callable[[str], Any], batch_size: int, show_progress: bool,
) -> str:
    like = source.manifest or next((c.manifest for c in found.versions if c.manifest is not None), None)
    manifest = _settings_of(like)
    docstore = kb_dir / source.name / DOCSTORE_FILE
    with contextlib.closing(Docstore.open_readonly(docstore)) as reader:
        manifest["next_chunk_id"] = max(like.next_chunk_id if like else 0, reader.max_chunk_id() + 1)
    writer = VersionWriter.prepare(
        kb_dir=kb_dir, kb_name=kb_dir.name, manifest=manifest, base=None, store=lambda: store_for(manifest),
        embeddings=lambda: embeddings_for(manifest["embedding"]["model"]), batch_size=batch_size,
        show_progress=show_progress,
    )
    return writer.reindex(docstore, BuildReport())


def _settings_of(like: Manifest | None) -> dict[str, Any]:
    """The build settings to repair with: those of the nearest readable manifest, else keyword-only."""
    if like is None:
        return {
            "embedding": {"model": "none", "dimension": None},
            "chunking": {"chunk_size": 400, "chunk_overlap": 80, "splitter": SPLITTER_VERSION},
        }
    data = {"embedding": {"model": like.embedding.model, "dimension": None}, "chunking": like.chunking.model_dump()}
    if not like.keyword_only:
        data["vectors"] = {"store": like.store}
    if like.created_at:
        data["created_at"] = like.created_at
    return data


def _hash_ok(version_dir: Path, manifest: Manifest, rel: str) -> bool:
    expected = manifest.files.get(rel)
    with contextlib.suppress(OSError):
        return expected is not None and storage.file_sha256(version_dir / rel) == expected
    return False


def _reason(error: Exception) -> str:
    """The damage itself, without the standard "repair it with..." tail."""
    text = str(error)
    text = text.split(" is damaged: ", 1)[-1]
    return text.split("; repair it with", 1)[0]


__all__ = ["Diagnosis", "VersionCheck", "check_version", "diagnose", "repair"]
