"""Step 3 of a bundle: knowledge bases, each copied at one consistent version.

A KB folder holds immutable ``v-*`` versions and a ``CURRENT`` pointer swapped atomically by
builds (kb/storage.py). So the copy reads ``CURRENT`` once, copies that version folder, checks
every file against the copied manifest and writes its own ``CURRENT``: a build running at the
same time publishes a new version beside it and never touches the one being copied. A build
may garbage-collect it once a second newer version lands; then the copy starts over from the
new ``CURRENT``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from app.bundle.errors import BundleError
from configs.errors import one_line
from kb import storage
from kb.errors import KnowledgeBaseError
from kb.names import validate_kb_name

log = logging.getLogger(__name__)

ATTEMPTS = 5


def copy_knowledge_base(root: Path, name: str, dest_root: Path) -> str:
    """Copy KB ``name`` from ``root`` into ``dest_root/name`` at its current version; returns it."""
    name = validate_kb_name(name)
    kb_dir = root / name
    if not storage.is_knowledge_base(kb_dir):
        raise BundleError(f"no knowledge base {name!r} under {root}; check --kb and kb_root")
    for _ in range(ATTEMPTS):
        version = storage.read_pointer(kb_dir)
        assert version is not None
        try:
            return copy_version(kb_dir, version, dest_root / name)
        except (OSError, KnowledgeBaseError) as e:  # shutil.Error (an OSError) lists vanished files
            # The version was garbage-collected mid-copy by two newer builds: take the new one.
            if storage.read_pointer(kb_dir) == version:
                detail = one_line(e)[:300]
                raise BundleError(f"knowledge base {name!r} is damaged or unreadable ({detail}); rebuild it before bundling") from e
            log.info("knowledge base %s moved on from %s while copying; copying again", name, version)
    raise BundleError(f"knowledge base {name!r} changed {ATTEMPTS} times while being copied; stop its builds and retry")


def copy_version(kb_dir: Path, version: str, dest: Path) -> str:
    """Copy one version folder and point the copy's CURRENT at it (nothing else)."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    shutil.copytree(kb_dir / version, dest / version, copy_function=copy_file)
    manifest = storage.read_manifest(dest / version, kb_name=kb_dir.name)  # every copied file against its hash
    if manifest.store != "faiss" and not manifest.keyword_only:
        raise BundleError(f"knowledge base {kb_dir.name!r} keeps its vectors in {manifest.store}; only faiss and "
                          "keyword-only knowledge bases travel in a bundle (rebuild it with kb.store: faiss)")
    (dest / storage.POINTER).write_text(version + "\n", encoding="utf-8")
    return version


def copy_file(source: str, dest: str) -> str:
    """How each file of a version is copied (a seam for the tests that build mid-copy)."""
    return shutil.copy2(source, dest)


def embedding_of(kb_root: Path, name: str) -> str:
    """The embedding model a bundled KB was built with (``none`` for keyword-only)."""
    kb_dir = kb_root / name
    manifest = storage.read_manifest(kb_dir / str(storage.read_pointer(kb_dir)), kb_name=name, verify=False)
    return str(manifest.embedding.model)
