"""Crash and hand-damage sweep 34: each test names the bug it guards against.

Versions without ``CURRENT`` (the pointer deleted by hand, or a first build killed between renaming
its version and writing the pointer) were taken for a knowledge base never written: ``ingest list``
hid it, ``ingest query`` said "create it with ingest build", and that build wrote a version of the
new files alone whose garbage collection deleted every older version (3 documents became 1).

A build whose write failed after ``CURRENT`` was swapped (the folder's fsync) said "the knowledge
base is unchanged" while it held the new document.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from ingest.cli import main as ingest_main
from kb import DamagedKnowledgeBaseError, KnowledgeBase, KnowledgeBaseError, storage
from kb.lifecycle import list_summaries

TEXTS = {
    "a.txt": "第一回 宴桃园豪杰三结义\n刘备、关羽、张飞三人在桃园结义，誓同生死。\n" * 8,
    "b.txt": "第二回 张翼德怒鞭督邮\n张飞鞭打督邮，刘备弃官而去。\n" * 8,
    "c.txt": "第三回 议温明董卓叱丁原\n董卓进京，吕布杀丁原。\n" * 8,
}


def write(root: Path, name: str) -> Path:
    path = root.parent / "src" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(TEXTS[name], encoding="utf-8")
    return path


def keyword_kb(root: Path) -> KnowledgeBase:
    return KnowledgeBase(root, "t", create=True, embedding_model="none", chunk_size=200, chunk_overlap=40)


def built_without_pointer(tmp_path: Path) -> Path:
    """KB ``t`` of a.txt then b.txt (two versions on disk), then its ``CURRENT`` deleted."""
    root = tmp_path / "kb"
    kb = keyword_kb(root)
    kb.add_files([write(root, "a.txt")])
    kb.add_files([write(root, "b.txt")])
    kb.close()
    (root / "t" / storage.POINTER).unlink()
    return root


def names(root: Path) -> set[str]:
    kb = KnowledgeBase(root, "t")
    try:
        return {Path(d.source).name for d in kb.list_documents()}
    finally:
        kb.close()


def test_versions_without_current_are_damage_not_a_new_knowledge_base(tmp_path: Path) -> None:
    """Opening (to build or to read) says damaged instead of "not found"; nothing is deleted."""
    root = built_without_pointer(tmp_path)
    before = storage.versions(root / "t")
    for create in (True, False):
        with pytest.raises(DamagedKnowledgeBaseError, match="CURRENT is missing"):
            KnowledgeBase(root, "t", create=create, embedding_model="none")
    assert storage.versions(root / "t") == before


def test_listing_shows_versions_without_current_as_damaged(tmp_path: Path) -> None:
    """``ingest list`` hid the knowledge base ("no knowledge bases"), so nothing pointed at doctor."""
    root = built_without_pointer(tmp_path)
    [summary] = list_summaries(root)
    assert summary.name == "t" and summary.damaged and "CURRENT is missing" in str(summary.error)


def test_a_served_knowledge_base_refuses_to_build_over_versions_without_current(tmp_path: Path) -> None:
    """An object opened before ``CURRENT`` went (a server) built a one-document KB and collected the rest."""
    root = tmp_path / "kb"
    kb = keyword_kb(root)
    kb.add_files([write(root, "a.txt")])
    kb.add_files([write(root, "b.txt")])
    (root / "t" / storage.POINTER).unlink()
    before = storage.versions(root / "t")
    with pytest.raises(DamagedKnowledgeBaseError, match="CURRENT is missing"):
        kb.add_files([write(root, "c.txt")])
    kb.close()
    assert storage.versions(root / "t") == before


def test_ingest_build_repairs_versions_without_current_before_adding(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The documented "ingest build repairs before adding": every document is kept, the new one added."""
    root = built_without_pointer(tmp_path)
    argv = ["build", "--kb-root", str(root), "--kb", "t", "-q", str(write(root, "c.txt"))]
    assert ingest_main(argv) == 0
    assert "rebuilt version" in capsys.readouterr().err
    assert names(root) == {"a.txt", "b.txt", "c.txt"}


def test_a_failure_after_the_swap_does_not_say_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fsync of the folder after ``CURRENT`` was replaced fails: the message says the build is in."""
    root = tmp_path / "kb"
    kb = keyword_kb(root)
    kb.add_files([write(root, "a.txt")])
    before = storage.read_pointer(root / "t")
    real = storage._fsync_dir

    def fsync_dir(path: Path) -> None:
        if path == root / "t" and storage.read_pointer(path) != before:
            raise OSError(errno.EIO, "Input/output error")
        real(path)

    monkeypatch.setattr(storage, "_fsync_dir", fsync_dir)
    with pytest.raises(KnowledgeBaseError, match="now holds this build") as failed:
        kb.add_files([write(root, "b.txt")])
    assert "unchanged" not in str(failed.value)
    kb.close()
    assert names(root) == {"a.txt", "b.txt"}


def test_a_failure_before_the_swap_still_says_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side: ENOSPC writing the pointer leaves the old version, and says so."""
    root = tmp_path / "kb"
    kb = keyword_kb(root)
    kb.add_files([write(root, "a.txt")])

    def point_at(kb_dir: Path, version: str) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(storage, "point_at", point_at)
    with pytest.raises(KnowledgeBaseError, match="the knowledge base is unchanged"):
        kb.add_files([write(root, "b.txt")])
    kb.close()
    assert names(root) == {"a.txt"}
