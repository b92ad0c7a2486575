"""KnowledgeBase storage: incremental builds, removal, several KBs, names, no pickle, BM25 reuse."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from kb import (
    KnowledgeBase,
    KnowledgeBaseError,
    bm25_index,
    build,
    reciprocal_rank_fusion,
    storage,
    validate_kb_name,
)
from tests.helpers import searches_during_builds


def keyword_kb(root: Path, name: str = "t") -> KnowledgeBase:
    return KnowledgeBase(root, name, create=True, embedding_model="none", chunk_size=200, chunk_overlap=40)


def snapshot(kb: KnowledgeBase) -> tuple:
    """Everything a reader can observe about a KB."""
    docs = kb.list_documents()
    hits = [(d.metadata["chunk_id"], d.metadata["start"]) for d in kb.search("玄德 关公 张飞 董卓", mode="bm25", k=8)]
    return (kb.manifest["files"], [(d.source, d.sha256, d.chunks) for d in docs], hits)


def test_build_is_idempotent(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = keyword_kb(tmp_path)
    first = kb.add_files([sanguo_excerpts["a"], sanguo_excerpts["b"]])
    assert len(first.added) == 2 and first.chunks_added > 20
    version = kb.version
    again = KnowledgeBase(tmp_path, "t").add_files([sanguo_excerpts["a"], sanguo_excerpts["b"]])
    assert again.chunks_added == 0 and again.chunks_skipped == first.chunks_added
    assert len(again.unchanged) == 2
    assert storage.read_pointer(tmp_path / "t") == version, "an unchanged build must not write a new version"
    assert "2 unchanged" in again.summary()


def test_chunks_carry_metadata_and_exact_offsets(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = keyword_kb(tmp_path)
    kb.add_files([sanguo_excerpts["a"], sanguo_excerpts["c"]])
    hits = kb.search("桃园 结义 兄弟", mode="bm25", k=5)
    assert hits
    for doc in hits:
        meta = doc.metadata
        assert set(meta) >= {"source", "doc_id", "chapter", "chapter_title", "start", "end", "score", "chunk_id"}
        assert kb.get_document_text(meta["doc_id"])[meta["start"] : meta["end"]] == doc.page_content
    top = hits[0].metadata
    assert top["source"] == str(sanguo_excerpts["a"].resolve()) and top["chapter"] == 1
    assert top["chapter_title"] == "宴桃园豪杰三结义 斩黄巾英雄首立功"
    gbk = kb.get_document("sanguo_c.txt")
    assert gbk.encoding == "gb18030" and gbk.chapters == 1


def test_changed_file_replaces_its_chunks(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    source = tmp_path / "book.txt"
    shutil.copy(sanguo_excerpts["a"], source)
    kb = keyword_kb(tmp_path)
    kb.add_files([source, sanguo_excerpts["b"]])
    old_ids = {d.metadata["chunk_id"] for d in kb.get_chunks("book.txt")}
    source.write_text(sanguo_excerpts["b"].read_text(encoding="utf-8")[:3000] + "\n第九回 新章\n孔明借东风。", encoding="utf-8")
    report = kb.add_files([source, sanguo_excerpts["b"]])
    assert report.replaced == [str(source.resolve())] and report.unchanged == [str(sanguo_excerpts["b"].resolve())]
    assert report.chunks_removed == len(old_ids)
    assert kb.get_document_text("book.txt") == source.read_text(encoding="utf-8")
    new_chunks = kb.get_chunks("book.txt")
    assert not old_ids & {d.metadata["chunk_id"] for d in new_chunks}, "chunk ids are never reused"
    assert [d.metadata["chapter"] for d in kb.search("孔明借东风", mode="bm25", k=1)] == [9]
    assert len(kb.list_documents()) == 2
    assert kb.manifest["counts"]["chunks"] == sum(d.chunks for d in kb.list_documents())


def test_remove_and_drop(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = keyword_kb(tmp_path)
    kb.add_files([sanguo_excerpts["a"], sanguo_excerpts["b"]])
    report = kb.remove(["sanguo_a.txt", "sanguo_a.txt"])  # bug: a repeated name counted as two files
    assert report.removed == [str(sanguo_excerpts["a"].resolve())] and report.files == 1
    assert [d.source for d in kb.list_documents()] == [str(sanguo_excerpts["b"].resolve())]
    assert all(d.metadata["source"].endswith("sanguo_b.txt") for d in kb.search("玄德", mode="bm25", k=10))
    with pytest.raises(KnowledgeBaseError, match="no document"):
        kb.remove(["sanguo_a.txt"])
    kb.remove([kb.list_documents()[0].doc_id])
    assert kb.list_documents() == [] and kb.search("玄德", mode="bm25") == []
    kb.drop()
    assert not (tmp_path / "t").exists()
    with pytest.raises(KnowledgeBaseError, match="no knowledge base named 't'"):
        KnowledgeBase(tmp_path, "t")


def test_several_knowledge_bases_under_one_root(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    keyword_kb(tmp_path, "甲").add_files([sanguo_excerpts["a"]])
    keyword_kb(tmp_path, "b-2").add_files([sanguo_excerpts["b"]])
    assert KnowledgeBase.list_names(tmp_path) == ["b-2", "甲"]
    assert [Path(d.source).name for d in KnowledgeBase(tmp_path, "甲").list_documents()] == ["sanguo_a.txt"]
    assert [Path(d.source).name for d in KnowledgeBase(tmp_path, "b-2").list_documents()] == ["sanguo_b.txt"]
    KnowledgeBase(tmp_path, "甲").drop()
    assert KnowledgeBase.list_names(tmp_path) == ["b-2"]


def test_other_process_builds_are_picked_up(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    reader = keyword_kb(tmp_path)
    KnowledgeBase(tmp_path, "t", create=True, embedding_model="none", chunk_size=200, chunk_overlap=40).add_files(
        [sanguo_excerpts["a"]]
    )
    assert [Path(d.source).name for d in reader.list_documents()] == ["sanguo_a.txt"]


@pytest.mark.parametrize(
    "name", ["", "..", ".", "../x", "a/b", "a\\b", "/abs", "a\x00b", "x" * 65, ".hidden", "-rf", " pad", "a..b", "c:d", "tab\tname"]
)
def test_bad_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(KnowledgeBaseError, match="invalid knowledge base name"):
        validate_kb_name(name)
    with pytest.raises(KnowledgeBaseError, match="invalid knowledge base name"):
        KnowledgeBase(tmp_path, name, create=True, embedding_model="none")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["sanguo", "三国演义", "my_kb-2", "v1.0", "西游 记"])
def test_good_names_are_accepted(name: str) -> None:
    assert validate_kb_name(name) == name


def test_chunking_mismatch_is_refused(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    keyword_kb(tmp_path).add_files([sanguo_excerpts["a"]])
    with pytest.raises(KnowledgeBaseError, match="chunk_size 200, not 300"):
        KnowledgeBase(tmp_path, "t", chunk_size=300)
    assert KnowledgeBase(tmp_path, "t").chunk_size == 200


class _Payload:
    """Unpickling this creates the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("target", ["docstore.sqlite", "bm25/data.csc.index.npy", "bm25/vocab.index.json"])
@pytest.mark.parametrize("rehash", [False, True])
def test_pickle_payload_in_store_files_never_runs(
    tmp_path: Path, sanguo_excerpts: dict[str, Path], target: str, rehash: bool
) -> None:
    """A tampered file must not execute code on load, even if the attacker fixes the manifest hashes."""
    root = tmp_path / "root"
    keyword_kb(root).add_files([sanguo_excerpts["a"]])
    marker = tmp_path / "PWNED"
    version_dir = root / "t" / storage.read_pointer(root / "t")
    (version_dir / target).write_bytes(pickle.dumps(_Payload(marker)))
    if rehash:
        manifest_path = version_dir / storage.MANIFEST
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        manifest["files"] = storage.hash_files(version_dir)
        storage.write_manifest(version_dir, manifest)
    with pytest.raises(KnowledgeBaseError, match="rebuild"):
        kb = KnowledgeBase(root, "t")
        kb.search("玄德", mode="bm25")
    assert not marker.exists()


def test_bm25_is_loaded_once_and_never_rebuilt_per_query(
    tmp_path: Path, sanguo_excerpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    keyword_kb(tmp_path).add_files([sanguo_excerpts["a"], sanguo_excerpts["b"]])
    version_dir = tmp_path / "t" / storage.read_pointer(tmp_path / "t")
    assert (version_dir / "bm25" / "vocab.index.json").is_file()
    calls = {"load": 0}
    real_load = bm25_index.BM25Index.load.__func__

    def counting_load(cls: type, folder: Path, ids: object) -> object:
        calls["load"] += 1
        return real_load(cls, folder, ids)

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("BM25 index rebuilt at query time")

    monkeypatch.setattr(bm25_index.BM25Index, "load", classmethod(counting_load))
    monkeypatch.setattr(bm25_index.BM25Index, "build", classmethod(no_build))
    monkeypatch.setattr(bm25_index.bm25s.BM25, "index", no_build)
    kb = KnowledgeBase(tmp_path, "t")
    results = [kb.search(q, mode="bm25", k=3) for q in ("董卓", "吕布", "桃园结义", "十常侍")]
    assert all(results) and calls["load"] == 1


def test_threshold_and_k(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = keyword_kb(tmp_path)
    kb.add_files([sanguo_excerpts["a"]])
    hits = kb.search("张飞 桃园", mode="bm25", k=6)
    scores = [d.metadata["score"] for d in hits]
    assert len(hits) == 6 and scores == sorted(scores, reverse=True)
    cut = kb.search("张飞 桃园", mode="bm25", k=6, score_threshold=scores[2])
    assert [d.metadata["chunk_id"] for d in cut] == [d.metadata["chunk_id"] for d in hits[:3]]
    assert kb.search("的了吗", mode="bm25") == [], "a query of stopwords matches nothing"


def test_keyword_only_kb_modes(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = keyword_kb(tmp_path)
    kb.add_files([sanguo_excerpts["a"]])
    assert kb.keyword_only and kb.dimension is None
    assert [d.metadata["chunk_id"] for d in kb.search("张飞", mode="hybrid")] == [
        d.metadata["chunk_id"] for d in kb.search("张飞", mode="bm25")
    ]
    with pytest.raises(KnowledgeBaseError, match="keyword-only"):
        kb.search("张飞", mode="dense")


def test_summarizer_reads_documents_and_chapters(tmp_path: Path, sanguo_novel_path: Path) -> None:
    sanguo_path = sanguo_novel_path
    kb = keyword_kb(tmp_path)
    kb.add_files([sanguo_path])
    info = kb.get_document("sanguo.txt")
    text = kb.get_document_text(info.doc_id)
    assert text == sanguo_path.read_text(encoding="utf-8") and info.chapters == 120
    chapters = kb.get_chapters(str(sanguo_path))
    assert chapters[0].number is None and [c.number for c in chapters[1:]] == list(range(1, 121))
    assert text[chapters[103].start :].startswith("第一百三回")


def test_reciprocal_rank_fusion_order() -> None:
    """Constructed case: c, 2nd in both lists, beats a and d (each 1st in one list only);
    a and d tie and a wins by coming from the earlier list; b (3rd in one list) is last,
    and e (2nd + 3rd) beats a single 1st place but not c."""
    fused = reciprocal_rank_fusion([["a", "c", "b", "e"], ["d", "c", "e"]], k=60)
    order = [item for item, _ in fused]
    assert order == ["c", "e", "a", "d", "b"]
    scores = dict(fused)
    assert scores["c"] == pytest.approx(2 / 62)
    assert scores["e"] == pytest.approx(1 / 64 + 1 / 63)
    assert scores["a"] == scores["d"] == pytest.approx(1 / 61) and scores["b"] == pytest.approx(1 / 63)
    # Equal scores: the better single rank wins, then the earlier list.
    assert [i for i, _ in reciprocal_rank_fusion([["x", "y"], ["y", "x"]])] == ["x", "y"]


def test_searches_keep_working_while_the_same_object_builds(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    """The web UI searches from worker threads while an upload is being added."""
    kb = keyword_kb(tmp_path)
    kb.add_files([sanguo_excerpts["a"]])

    def search() -> None:
        assert kb.search("玄德", mode="bm25", k=3)

    searches_during_builds(kb, search, sanguo_excerpts)
    assert {Path(d.source).name for d in kb.list_documents()} == {"sanguo_a.txt", "sanguo_c.txt"}


@pytest.mark.parametrize("same_size", [False, True])
def test_a_file_changed_while_it_is_added_is_refused_and_nothing_is_written(
    tmp_path: Path, sanguo_excerpts: dict[str, Path], monkeypatch: pytest.MonkeyPatch, same_size: bool
) -> None:
    """Files are read twice (checked and hashed, then streamed into the docstore), so an edit
    in between must not store text that does not match the recorded hash: a different size or
    mtime is caught by the loader, a same-size edit with the old mtime by the hash."""
    source = tmp_path / "book.txt"
    shutil.copy(sanguo_excerpts["a"], source)
    kb = keyword_kb(tmp_path)
    kb.add_files([sanguo_excerpts["b"]])
    before = snapshot(kb)
    real_scan = build.Incoming.scan

    def scan_then_edit(source_label: str, encoding: str, blocks: Any) -> build.Incoming:
        doc = real_scan(source_label, encoding, blocks)
        data = source.read_bytes()
        stat = source.stat()
        source.write_bytes(data.replace("玄德".encode(), "曹操".encode()) if same_size else data + "新的一段。".encode())
        if same_size:
            os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        return doc

    monkeypatch.setattr(build.Incoming, "scan", scan_then_edit)
    with pytest.raises(KnowledgeBaseError, match="changed while it was being"):
        kb.add_files([source])
    assert snapshot(KnowledgeBase(tmp_path, "t")) == before
    assert [p.name for p in (tmp_path / "t").iterdir() if p.name.startswith(".staging")] == []


def test_document_text_streams_into_the_docstore_in_blocks(tmp_path: Path, sanguo_path: Path) -> None:
    """A whole novel is stored as several text blocks (not one value holding the file) and
    reads back exactly."""
    data = sanguo_path.read_bytes()
    source = tmp_path / "src" / "sanguo.txt"  # 1.5 MiB or more: over one 1 MiB block
    source.parent.mkdir()
    source.write_bytes(data * max(1, -(-(3 << 19) // len(data))))  # the excerpt repeated, the novel once
    kb = keyword_kb(tmp_path)
    kb.add_files([source])
    text = source.read_text(encoding="utf-8")
    assert kb.get_document_text("sanguo.txt") == text
    with sqlite3.connect(kb.path / kb.version / "docstore.sqlite") as conn:
        blocks = conn.execute("SELECT count(*), max(length(text)) FROM document_blocks").fetchone()
        assert conn.execute("SELECT text FROM documents").fetchone() == ("",)
    assert blocks[0] > 1 and blocks[1] < len(text)


def test_files_can_be_recorded_under_labels(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = keyword_kb(tmp_path)
    report = kb.add_files([sanguo_excerpts["a"]], sources=["上传的书.txt"])
    assert report.added == ["上传的书.txt"] and kb.get_document("上传的书.txt").encoding == "utf-8"
    with pytest.raises(ValueError, match="one source per file"):
        kb.add_files([sanguo_excerpts["a"], sanguo_excerpts["b"]], sources=["only-one.txt"])


def test_docstores_written_before_text_blocks_still_read(tmp_path: Path) -> None:
    """Docstores from before streamed builds hold a document's whole text in documents.text and
    have no document_blocks table."""
    from kb.docstore import Docstore

    path = tmp_path / "docstore.sqlite"
    with sqlite3.connect(path) as conn:
        conn.executescript(SCHEMA_BEFORE_BLOCKS)
        conn.execute("INSERT INTO documents VALUES ('d1', 'a.txt', 'x', 'utf-8', 4, 'now', '桃园结义')")
    conn.close()
    store = Docstore.open_readonly(path)
    try:
        assert store.document_text("d1") == "桃园结义"
        assert store.document_text("nope") is None
    finally:
        store.close()


SCHEMA_BEFORE_BLOCKS = """
CREATE TABLE documents (doc_id TEXT PRIMARY KEY, source TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL,
    encoding TEXT NOT NULL, chars INTEGER NOT NULL, added_at TEXT NOT NULL, text TEXT NOT NULL);
"""
