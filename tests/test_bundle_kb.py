"""Knowledge bases go into a bundle at one consistent version, even while being rebuilt."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from app.bundle import BundleError
from app.bundle import knowledge_bases as bundle_kbs
from app.bundle.knowledge_bases import copy_knowledge_base
from kb import KnowledgeBase, storage

TEXTS = {
    "taoyuan.txt": "第一回 宴桃园豪杰三结义\n刘备、关羽、张飞在桃园结为兄弟，誓同生死。",
    "xuzhou.txt": "第二回 张翼德怒鞭督邮\n张飞大怒，把督邮绑在马桩上，鞭打不止。",
}


def keyword_kb(root: Path, texts: dict[str, str] = TEXTS) -> KnowledgeBase:
    kb = KnowledgeBase(root, "三国", create=True, embedding_model="none", chunk_size=40, chunk_overlap=0)
    kb.add_texts(texts)
    return kb


def sources(kb_root: Path) -> set[str]:
    kb = KnowledgeBase(kb_root, "三国")
    try:
        return {d.source for d in kb.list_documents()}
    finally:
        kb.close()


def rebuild_during_copy(monkeypatch: pytest.MonkeyPatch, kb: KnowledgeBase, *, builds: int) -> list[str]:
    """Make the copy run ``builds`` new builds of ``kb`` right after its first file; the
    versions those builds published."""
    published: list[str] = []

    def copy_then_build(source: str, dest: str) -> str:
        result = shutil.copy2(source, dest)
        if not published:
            for i in range(builds):
                kb.add_texts({f"extra{i}.txt": f"第{i + 3}回 新章\n曹操起兵讨伐董卓，诸侯会盟{i}。"})
                published.append(kb.version)
        return result

    monkeypatch.setattr(bundle_kbs, "copy_file", copy_then_build)
    return published


def test_a_build_during_the_copy_leaves_the_copy_at_the_version_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kb = keyword_kb(tmp_path / "root")
    before = kb.version
    published = rebuild_during_copy(monkeypatch, kb, builds=1)
    version = copy_knowledge_base(tmp_path / "root", "三国", tmp_path / "bundle-kb")
    assert published and published[0] != before  # the build did land mid-copy
    assert version == before
    copied = tmp_path / "bundle-kb" / "三国"
    assert (copied / "CURRENT").read_text().strip() == before
    assert sorted(p.name for p in copied.iterdir()) == ["CURRENT", before]  # one version, no lock or tmp
    storage.read_manifest(copied / before)  # every file matches its hash
    assert sources(tmp_path / "bundle-kb") == set(TEXTS)  # the old build, whole
    bundled = KnowledgeBase(tmp_path / "bundle-kb", "三国")
    assert "桃园" in bundled.search("桃园结义", k=1)[0].page_content
    bundled.close()
    kb.close()


def test_a_version_collected_mid_copy_is_copied_again_at_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds during the copy garbage-collect the version being copied: the copy starts
    over at the newest version instead of shipping half of one."""
    kb = keyword_kb(tmp_path / "root")
    before = kb.version
    published = rebuild_during_copy(monkeypatch, kb, builds=2)
    version = copy_knowledge_base(tmp_path / "root", "三国", tmp_path / "bundle-kb")
    assert not (tmp_path / "root" / "三国" / before).exists()
    assert version == published[-1]
    assert sources(tmp_path / "bundle-kb") == {*TEXTS, "extra0.txt", "extra1.txt"}
    kb.close()


def test_copies_taken_while_a_writer_keeps_building_are_each_whole(tmp_path: Path) -> None:
    kb = keyword_kb(tmp_path / "root")
    stop = threading.Event()

    def keep_building() -> None:
        i = 0
        while not stop.is_set():
            kb.add_texts({f"loop{i % 3}.txt": f"第{i + 9}回\n赵云单骑救主，长坂坡前第{i}次。"})
            i += 1

    writer = threading.Thread(target=keep_building)
    writer.start()
    try:
        for n in range(6):
            dest = tmp_path / f"copy{n}"
            version = copy_knowledge_base(tmp_path / "root", "三国", dest)
            manifest = storage.read_manifest(dest / "三国" / version)
            assert set(TEXTS) <= sources(dest) and manifest["files"]
    finally:
        stop.set()
        writer.join()
        kb.close()


def test_unknown_or_damaged_knowledge_bases_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no knowledge base 'missing'"):
        copy_knowledge_base(tmp_path, "missing", tmp_path / "out")
    kb = keyword_kb(tmp_path / "root")
    version_dir = tmp_path / "root" / "三国" / kb.version
    (version_dir / "docstore.sqlite").write_bytes(b"not a database")
    with pytest.raises(BundleError, match="damaged"):
        copy_knowledge_base(tmp_path / "root", "三国", tmp_path / "out")
    kb.close()
