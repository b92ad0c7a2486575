"""Knowledge bases whose vectors live in Milvus (embedded Milvus Lite, as CI runs it).

Every check of what Milvus holds goes through a separate pymilvus client, not through the
code under test. The tiny sentence-transformers model gives many exactly tied scores, so
rankings are compared as (score, chunk id) lists over all chunks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ingest.cli import main
from kb import EmbeddingModelError, KnowledgeBase, KnowledgeBaseError, reciprocal_rank_fusion
from kb.embedding import load_embeddings
from kb.milvus_store import (
    COLLECTION_FILE,
    live_filter,
    resolve_uri,
    retired_ranges,
    stale_filter,
)
from tests.helpers import searches_during_builds

pytest.importorskip("milvus_lite")

REPO = Path(__file__).resolve().parents[1]
QUERIES = ["董卓欲废少帝，丁原不从", "吕布杀丁原投董卓", "桃园结义"]


@pytest.fixture(scope="session")
def tiny_embeddings(tiny_embedding_path: Path) -> Any:
    """One loaded copy of the tiny model, shared by every knowledge base in this file."""
    return load_embeddings(str(tiny_embedding_path), device="cpu", batch_size=16)


def make_kb(root: Path, name: str, model: Path, embeddings: Any, **options: Any) -> KnowledgeBase:
    kb = KnowledgeBase(
        root, name, create=True, embedding_model=str(model), chunk_size=200, chunk_overlap=40,
        device="cpu", batch_size=16, **{"store": "milvus", **options},
    )
    kb.set_embeddings(embeddings)
    return kb


def reopen(root: Path, name: str, embeddings: Any, **options: Any) -> KnowledgeBase:
    kb = KnowledgeBase(root, name, device="cpu", **options)
    kb.set_embeddings(embeddings)
    return kb


def milvus_ids(db: Path, collection: str, expression: str = "chunk_id >= 0") -> list[int]:
    """Chunk ids stored in a collection, read with a client of its own."""
    from pymilvus import MilvusClient

    client = MilvusClient(uri=str(db))
    try:
        client.load_collection(collection)
        rows = client.query(collection, filter=expression, output_fields=["chunk_id"], limit=16384)
        return sorted(int(r["chunk_id"]) for r in rows)
    finally:
        client.close()


def milvus_collections(db: Path) -> list[str]:
    from pymilvus import MilvusClient

    client = MilvusClient(uri=str(db))
    try:
        return sorted(client.list_collections())
    finally:
        client.close()


def ranking(kb: KnowledgeBase, query: str, *, mode: str = "dense", k: int | None = None) -> list[tuple[float, int]]:
    """Hits as sorted (score, id) pairs; k defaults to the number of chunks, so a stale row
    ranked in Milvus would push a live chunk out of the list."""
    k = k or kb.manifest["counts"]["chunks"]
    return sorted((-round(h.metadata["score"], 4), h.metadata["chunk_id"]) for h in kb.search(query, mode=mode, k=k))


def raw_dense_ids(kb: KnowledgeBase, query: str) -> list[int]:
    """What the vector store itself returns for a query (before the docstore lookup)."""
    kb.refresh()
    version = kb._live.version
    assert version is not None and version.dense is not None
    vector = np.asarray(kb._embed_query(query), dtype=np.float32)
    return sorted(i for i, _ in version.dense.search(vector, 10_000))


def live_ids(kb: KnowledgeBase) -> list[int]:
    return sorted(c.metadata["chunk_id"] for d in kb.list_documents() for c in kb.get_chunks(d.doc_id))


@pytest.fixture()
def built(
    tmp_path: Path, tiny_embedding_path: Path, tiny_embeddings: Any, sanguo_excerpts: dict[str, Path]
) -> KnowledgeBase:
    kb = make_kb(tmp_path / "root", "m", tiny_embedding_path, tiny_embeddings)
    kb.add_files([sanguo_excerpts["a"], sanguo_excerpts["b"]])
    yield kb
    kb.close()


def test_build_keeps_vectors_in_milvus_lite_under_kb_root(built: KnowledgeBase) -> None:
    db = built.root / "milvus.db"
    vectors = built.manifest["vectors"]
    assert built.store == "milvus" and db.is_dir()
    assert vectors["store"] == "milvus" and vectors["uri"] == "milvus.db" and vectors["retired"] == []
    assert vectors["collection"].startswith("glmkb_m_")
    assert json.loads((built.path / COLLECTION_FILE).read_text())["collection"] == vectors["collection"]
    version_dir = built.path / built.version
    assert not (version_dir / "index.faiss").exists(), "no FAISS file next to a Milvus-backed version"
    assert set(built.manifest["files"]) >= {"docstore.sqlite", "bm25/vocab.index.json"}
    assert milvus_ids(db, vectors["collection"]) == live_ids(built) and len(live_ids(built)) > 50


def test_same_file_twice_adds_nothing(built: KnowledgeBase, sanguo_excerpts: dict[str, Path]) -> None:
    version, collection = built.version, built.manifest["vectors"]["collection"]
    before = milvus_ids(built.root / "milvus.db", collection)
    report = built.add_files([sanguo_excerpts["a"]])
    assert report.unchanged == [str(sanguo_excerpts["a"])] and report.chunks_added == 0
    assert built.version == version
    assert milvus_ids(built.root / "milvus.db", collection) == before


def test_dense_results_equal_the_faiss_store(
    tmp_path: Path, tiny_embedding_path: Path, tiny_embeddings: Any, sanguo_excerpts: dict[str, Path]
) -> None:
    """Same files, same tiny model: Milvus Lite (FLAT, IP) and FAISS (IndexFlatIP) rank alike."""
    root = tmp_path / "root"
    milvus = make_kb(root, "m", tiny_embedding_path, tiny_embeddings)
    faiss = make_kb(root, "f", tiny_embedding_path, tiny_embeddings, store="faiss")
    for kb in (milvus, faiss):
        kb.add_files([sanguo_excerpts["a"], sanguo_excerpts["b"]])
    assert faiss.store == "faiss" and (faiss.path / faiss.version / "index.faiss").exists()
    total = faiss.manifest["counts"]["chunks"]
    for query in QUERIES:
        assert ranking(milvus, query) == ranking(faiss, query)
        assert len(ranking(milvus, query)) == total
        top_m = [h.metadata["score"] for h in milvus.search(query, mode="dense", k=5)]
        top_f = [h.metadata["score"] for h in faiss.search(query, mode="dense", k=5)]
        assert top_m == pytest.approx(top_f, abs=1e-5)
    target = milvus.get_chunks("sanguo_b.txt")[3]
    best = milvus.search(target.page_content, mode="dense", k=1)[0]
    assert best.metadata["score"] == pytest.approx(1.0, abs=1e-5)
    milvus.close()


def test_hybrid_fuses_milvus_and_bm25(built: KnowledgeBase) -> None:
    query = "吕布杀丁原投董卓"
    dense = [h.metadata["chunk_id"] for h in built.search(query, mode="dense", k=50)]
    sparse = [h.metadata["chunk_id"] for h in built.search(query, mode="bm25", k=50)]
    hybrid = built.search(query, mode="hybrid", k=8)
    expected = reciprocal_rank_fusion([dense, sparse])[:8]
    assert [(h.metadata["chunk_id"], h.metadata["score"]) for h in hybrid] == [(i, pytest.approx(s)) for i, s in expected]
    assert all("dense_score" in h.metadata for h in hybrid)
    assert built.as_retriever(mode="hybrid", k=3).invoke(query)


def test_changed_file_replaces_its_vectors(
    tmp_path: Path, tiny_embedding_path: Path, tiny_embeddings: Any, sanguo_excerpts: dict[str, Path]
) -> None:
    root = tmp_path / "root"
    source = tmp_path / "doc.txt"
    source.write_bytes(sanguo_excerpts["a"].read_bytes())
    kb = make_kb(root, "m", tiny_embedding_path, tiny_embeddings)
    kb.add_files([source, sanguo_excerpts["b"]])
    old_chunks = kb.get_chunks("doc.txt")
    old_ids = {c.metadata["chunk_id"] for c in old_chunks}
    source.write_text(sanguo_excerpts["c"].read_bytes().decode("gbk"), encoding="utf-8")

    report = kb.add_files([source, sanguo_excerpts["b"]])
    assert report.replaced == [str(source.resolve())] and report.chunks_removed == len(old_ids)
    new_chunks = kb.get_chunks("doc.txt")
    assert not old_ids & {c.metadata["chunk_id"] for c in new_chunks}, "chunk ids are never reused"
    for query in QUERIES:
        assert raw_dense_ids(kb, query) == live_ids(kb), "Milvus itself filters the retired rows out"
        assert {i for _, i in ranking(kb, query)} == set(live_ids(kb))
    probe = kb.search(old_chunks[0].page_content, mode="dense", k=3)
    assert all(h.metadata["chunk_id"] not in old_ids for h in probe)
    target = new_chunks[2]
    assert kb.search(target.page_content, mode="dense", k=1)[0].metadata["score"] == pytest.approx(1.0, abs=1e-5)

    # The replaced vectors stay one build for readers of the previous version, then go.
    db, collection = root / "milvus.db", kb.manifest["vectors"]["collection"]
    assert kb.manifest["vectors"]["retired"] == [[min(old_ids), max(old_ids) + 1]]
    assert set(milvus_ids(db, collection)) == set(live_ids(kb)) | old_ids
    kb.add_files([sanguo_excerpts["a"]])
    assert milvus_ids(db, collection) == live_ids(kb)
    kb.close()


def test_remove_a_file(built: KnowledgeBase, tiny_embeddings: Any, sanguo_excerpts: dict[str, Path]) -> None:
    removed = {c.metadata["chunk_id"] for c in built.get_chunks("sanguo_a.txt")}
    report = built.remove(["sanguo_a.txt"])
    assert report.removed == [str(sanguo_excerpts["a"])]
    sources = {Path(h.metadata["source"]).name for q in QUERIES for h in built.search(q, mode="dense", k=500)}
    assert sources == {"sanguo_b.txt"}
    assert raw_dense_ids(built, "玄德") == live_ids(built)
    assert {h.metadata["chunk_id"] for h in built.search("玄德", mode="hybrid", k=50)}.isdisjoint(removed)
    other = reopen(built.root, "m", tiny_embeddings)
    assert ranking(other, "玄德") == ranking(built, "玄德"), "another reader sees the same version"
    other.close()
    db, collection = built.root / "milvus.db", built.manifest["vectors"]["collection"]
    built.add_files([sanguo_excerpts["c"]])
    assert milvus_ids(db, collection) == live_ids(built)


def test_two_knowledge_bases_share_one_lite_db_in_separate_collections(
    tmp_path: Path, tiny_embedding_path: Path, tiny_embeddings: Any, sanguo_excerpts: dict[str, Path]
) -> None:
    root = tmp_path / "root"
    one = make_kb(root, "one", tiny_embedding_path, tiny_embeddings)
    two = make_kb(root, "两", tiny_embedding_path, tiny_embeddings)
    one.add_files([sanguo_excerpts["a"]])
    two.add_files([sanguo_excerpts["b"]])
    c1, c2 = one.manifest["vectors"]["collection"], two.manifest["vectors"]["collection"]
    assert c1 != c2 and c2.startswith("glmkb_kb_")
    assert milvus_collections(root / "milvus.db") == sorted([c1, c2])
    assert {Path(h.metadata["source"]).name for h in one.search("董卓", mode="dense", k=500)} == {"sanguo_a.txt"}
    assert {Path(h.metadata["source"]).name for h in two.search("董卓", mode="dense", k=500)} == {"sanguo_b.txt"}
    assert KnowledgeBase.list_names(root) == ["one", "两"], "the Lite database is not a knowledge base"

    one.drop()
    assert milvus_collections(root / "milvus.db") == [c2], "drop removes the collection"
    assert KnowledgeBase.list_names(root) == ["两"]
    assert {Path(h.metadata["source"]).name for h in two.search("董卓", mode="dense", k=500)} == {"sanguo_b.txt"}
    two.close()


def test_embedding_model_and_store_mismatch_are_refused(
    built: KnowledgeBase, other_embedding_path: Path
) -> None:
    with pytest.raises(EmbeddingModelError, match="was built with embedding model"):
        KnowledgeBase(built.root, "m", embedding_model=str(other_embedding_path))
    with pytest.raises(KnowledgeBaseError, match="keeps its vectors in milvus, not faiss"):
        KnowledgeBase(built.root, "m", store="faiss")
    with pytest.raises(KnowledgeBaseError, match="unknown vector store"):
        KnowledgeBase(built.root, "m", store="chroma")
    other = reopen(built.root, "m", load_embeddings(str(other_embedding_path), device="cpu"))
    with pytest.raises(EmbeddingModelError, match="48-dimensional vectors but knowledge base 'm' holds 32"):
        other.search("董卓", mode="dense")
    other.close()


def test_keyword_only_knowledge_base_never_starts_milvus(tmp_path: Path, sanguo_excerpts: dict[str, Path]) -> None:
    kb = KnowledgeBase(tmp_path / "root", "kw", create=True, embedding_model="none", store="milvus")
    kb.add_files([sanguo_excerpts["a"]])
    assert kb.store is None and "vectors" not in kb.manifest
    assert not (tmp_path / "root" / "milvus.db").exists()
    assert kb.search("董卓", mode="hybrid", k=3)


def test_unreachable_server_is_one_clear_error_and_writes_nothing(
    tmp_path: Path, tiny_embedding_path: Path, tiny_embeddings: Any, sanguo_excerpts: dict[str, Path]
) -> None:
    root = tmp_path / "root"
    kb = make_kb(root, "m", tiny_embedding_path, tiny_embeddings, milvus_uri="http://127.0.0.1:1")
    started = time.monotonic()
    with pytest.raises(KnowledgeBaseError) as info:
        kb.add_files([sanguo_excerpts["a"]])
    assert time.monotonic() - started < 15
    message = str(info.value)
    assert "\n" not in message and "http://127.0.0.1:1" in message and "kb.milvus_uri" in message
    assert message.startswith("cannot reach Milvus at http://127.0.0.1:1")
    assert KnowledgeBase.list_names(root) == [] and not (root / "m" / COLLECTION_FILE).exists()


@pytest.mark.parametrize("bad", ["file-parent", "not-db"])
def test_unusable_lite_path_is_one_clear_error(
    tmp_path: Path, tiny_embedding_path: Path, tiny_embeddings: Any, sanguo_excerpts: dict[str, Path], bad: str
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    uri = str(blocker / "milvus.db") if bad == "file-parent" else str(tmp_path / "vectors.sqlite")
    kb = make_kb(tmp_path / "root", "m", tiny_embedding_path, tiny_embeddings, milvus_uri=uri)
    with pytest.raises(KnowledgeBaseError) as info:
        kb.add_files([sanguo_excerpts["a"]])
    message = str(info.value)
    assert "\n" not in message and uri in message and "kb.milvus_uri" in message and ".db" in message
    assert KnowledgeBase.list_names(tmp_path / "root") == []


def test_cli_errors_for_an_unavailable_milvus_are_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tiny_embedding_path: Path,
    sanguo_excerpts: dict[str, Path],
) -> None:
    monkeypatch.setenv("GLMKB_KB__MILVUS_URI", "http://127.0.0.1:1")
    code = main(["build", str(sanguo_excerpts["a"]), "--kb", "m", "--store", "milvus",
                 "--embedding", str(tiny_embedding_path), "--embedding-device", "cpu", "-q"])
    _, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("ingest: error: cannot reach Milvus at http://127.0.0.1:1") and "kb.milvus_uri" in lines[0]


def test_cli_build_query_list_drop_with_kb_store_milvus(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    tiny_embedding_path: Path, sanguo_excerpts: dict[str, Path],
) -> None:
    """``kb.store: milvus`` from the environment; the default URI is milvus.db under kb_root."""
    root = tmp_path / "kb_root"
    monkeypatch.setenv("GLMKB_KB_ROOT", str(root))
    monkeypatch.setenv("GLMKB_KB__STORE", "milvus")
    base = ["--kb", "m", "--embedding", str(tiny_embedding_path), "--embedding-device", "cpu"]
    assert main(["build", str(sanguo_excerpts["a"]), *base, "--chunk-size", "200", "--chunk-overlap", "40", "-q"]) == 0
    assert main(["query", "董卓废少帝", *base, "--mode", "dense", "-k", "3", "--json"]) == 0
    out, _ = capsys.readouterr()
    hits = json.loads(out.strip().splitlines()[-1])
    assert len(hits) == 3 and all(h["source"].endswith("sanguo_a.txt") for h in hits)
    collection = json.loads((root / "m" / COLLECTION_FILE).read_text())["collection"]
    assert milvus_collections(root / "milvus.db") == [collection]
    code = main(["build", str(sanguo_excerpts["b"]), "--kb", "m", "--store", "faiss", "-q"])
    _, err = capsys.readouterr()
    assert code == 2 and "keeps its vectors in milvus, not faiss" in err
    assert main(["drop", "--kb", "m"]) == 0
    assert milvus_collections(root / "milvus.db") == []


HOLD_LITE_DB = "import sys, time\nfrom pymilvus import MilvusClient\nMilvusClient(uri=sys.argv[1])\nprint('ready', flush=True)\ntime.sleep(120)\n"


def test_lite_db_held_by_another_process(built: KnowledgeBase, tiny_embeddings: Any) -> None:
    """Milvus Lite is one process at a time: a clear error for vectors, documents and BM25 still work."""
    db = built.root / "milvus.db"
    built.close()  # let go of the Lite database, as a finished ingest command does
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LITE_DB, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "ready"
        reader = reopen(built.root, "m", tiny_embeddings)
        assert [Path(d.source).name for d in reader.list_documents()] == ["sanguo_a.txt", "sanguo_b.txt"]
        assert reader.search("董卓", mode="bm25", k=2)
        with pytest.raises(KnowledgeBaseError) as info:
            reader.search("董卓", mode="dense", k=2)
        message = str(info.value)
        assert "\n" not in message and str(db) in message and "in use by another process" in message
        assert "http://host:19530" in message
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert len(reader.search("董卓", mode="dense", k=2)) == 2, "works again once the other process is gone"
    reader.close()


def test_vectors_lost_outside_glmkb_are_detected(built: KnowledgeBase, tiny_embeddings: Any) -> None:
    from pymilvus import MilvusClient

    db, collection = built.root / "milvus.db", built.manifest["vectors"]["collection"]
    built.close()
    client = MilvusClient(uri=str(db))
    client.delete(collection, filter="chunk_id < 5")
    client.close()
    reader = reopen(built.root, "m", tiny_embeddings)
    assert reader.search("董卓", mode="bm25", k=2)
    with pytest.raises(KnowledgeBaseError, match="drop the knowledge base and build it again"):
        reader.search("董卓", mode="dense", k=2)
    reader.drop()
    assert milvus_collections(db) == []


def test_missing_collection_names_the_uri_it_was_built_with(
    built: KnowledgeBase, tiny_embeddings: Any, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere" / "milvus.db"
    elsewhere.mkdir(parents=True)
    reader = reopen(built.root, "m", tiny_embeddings, milvus_uri=str(elsewhere))
    with pytest.raises(KnowledgeBaseError) as info:
        reader.search("董卓", mode="dense")
    message = str(info.value)
    assert built.manifest["vectors"]["collection"] in message and "its manifest says milvus.db" in message
    reader.close()


KILL_AT_STEP = textwrap.dedent(
    """
    import os, signal, sys
    from kb import KnowledgeBase, milvus_store, storage

    root, point, files = sys.argv[1], sys.argv[2], sys.argv[3:]

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    real_replace, real_insert = os.replace, milvus_store.MilvusStore._insert

    def replace(src, dst):
        name = os.path.basename(dst)
        if point == "before-pointer" and name == "CURRENT":
            die()
        real_replace(src, dst)
        if point == "after-pointer" and name == "CURRENT":
            die()

    def insert(self, client, name, change):
        real_insert(self, client, name, change)
        if point == "after-milvus-insert":
            die()

    storage.os.replace = replace
    milvus_store.MilvusStore._insert = insert
    KnowledgeBase(root, "m", device="cpu").add_files(files)
    """
)


def state(root: Path, embeddings: Any) -> tuple:
    kb = reopen(root, "m", embeddings)
    try:
        docs = sorted((Path(d.source).name, d.sha256, d.chunks) for d in kb.list_documents())
        return kb.version, docs, ranking(kb, "董卓 吕布"), ranking(kb, "玄德", mode="hybrid", k=10)
    finally:
        kb.close()


@pytest.mark.parametrize("point", ["after-milvus-insert", "before-pointer", "after-pointer"])
def test_build_killed_between_milvus_writes_and_the_manifest_swap(
    tmp_path: Path, tiny_embedding_path: Path, tiny_embeddings: Any, sanguo_excerpts: dict[str, Path], point: str
) -> None:
    """SIGKILL after the new vectors are in Milvus but before (or right after) ``CURRENT`` moves."""
    root, src = tmp_path / "root", tmp_path / "src"
    src.mkdir()
    a, b = src / "a.txt", src / "b.txt"
    a.write_bytes(sanguo_excerpts["a"].read_bytes())
    b.write_bytes(sanguo_excerpts["b"].read_bytes())
    kb = make_kb(root, "m", tiny_embedding_path, tiny_embeddings)
    kb.add_files([a, b])
    db, collection = root / "milvus.db", kb.manifest["vectors"]["collection"]
    kb.close()  # the child needs the Lite database: one process at a time
    before = state(root, tiny_embeddings)
    a.write_bytes(sanguo_excerpts["c"].read_bytes())  # a changed: new vectors in, old ones retired
    child = subprocess.run(
        [sys.executable, "-c", KILL_AT_STEP, str(root), point, str(a)],
        cwd=REPO, capture_output=True, timeout=300,
    )
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    after = state(root, tiny_embeddings)
    if point == "after-pointer":
        assert after[0] != before[0] and after[1] != before[1] and after[2] != before[2]
        assert len(after[2]) == sum(chunks for _, _, chunks in after[1]), "every chunk of the new version has its vector"
    else:
        assert after == before, "readers still see the old version, vectors included"
        next_id = json.loads((root / "m" / before[0] / "manifest.json").read_text())["next_chunk_id"]
        assert milvus_ids(db, collection, f"chunk_id >= {next_id}"), "the kill landed after the Milvus writes"
        reader = reopen(root, "m", tiny_embeddings)
        assert raw_dense_ids(reader, "董卓") == live_ids(reader), "the leftovers are invisible to readers"
        reader.close()
    # The next build deletes whatever the killed one left in Milvus.
    kb = reopen(root, "m", tiny_embeddings)
    kb.add_files([a, b, sanguo_excerpts["c"]])
    retired = {i for start, end in kb.manifest["vectors"]["retired"] for i in range(start, end)}
    assert set(milvus_ids(db, collection)) == set(live_ids(kb)) | retired
    assert len(ranking(kb, "董卓")) == kb.manifest["counts"]["chunks"]
    kb.close()


def test_retired_ranges_and_filters() -> None:
    import numpy as np

    live = np.array([0, 1, 2, 10, 11, 30])
    assert retired_ranges([5, 3, 4, 6], live) == [[3, 7]]
    assert retired_ranges([3, 4, 20, 21], live) == [[3, 5], [20, 22]], "live chunks 10, 11 lie between"
    assert retired_ranges([3, 4, 7, 8], live) == [[3, 9]], "ids 5, 6 are not live: merged"
    assert retired_ranges([], live) == []
    assert live_filter(12, [[3, 9]]) == "chunk_id < 12 and not (chunk_id >= 3 and chunk_id < 9)"
    assert stale_filter(12, [[3, 9]]) == "chunk_id >= 12 or (chunk_id >= 3 and chunk_id < 9)"


def test_uri_resolution(tmp_path: Path) -> None:
    assert resolve_uri(None, tmp_path) == (str((tmp_path / "milvus.db").resolve()), "milvus.db")
    assert resolve_uri("vec/x.db", tmp_path) == (str((tmp_path / "vec" / "x.db").resolve()), "vec/x.db")
    absolute = str(tmp_path / "abs.db")
    assert resolve_uri(absolute, Path("/elsewhere")) == (absolute, absolute)
    uri, recorded = resolve_uri("http://root:secret@milvus.local:19530", tmp_path)
    assert uri == "http://root:secret@milvus.local:19530" and recorded == "http://milvus.local:19530"
    for bad in ("vectors.sqlite", "http://"):
        with pytest.raises(KnowledgeBaseError, match="kb.milvus_uri"):
            resolve_uri(bad, tmp_path)


def test_names_ending_in_db_are_kept_for_lite(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeBaseError, match="Milvus Lite"):
        KnowledgeBase(tmp_path, "milvus.db", create=True, embedding_model="none")


def test_dense_searches_keep_working_while_the_same_object_builds(
    tmp_path: Path, tiny_embedding_path: Path, tiny_embeddings: Any, sanguo_excerpts: dict[str, Path]
) -> None:
    """The web UI searches from worker threads while an upload is added: every search sees one
    complete version, never the new rows of a build in progress or the retired ones (either
    would push live chunks out of the top k and leave fewer than k hits)."""
    kb = make_kb(tmp_path / "root", "m", tiny_embedding_path, tiny_embeddings)
    kb.add_files([sanguo_excerpts["a"]])
    k = kb.manifest["counts"]["chunks"]  # every version below has at least these chunks

    def search() -> None:
        hits = kb.search("玄德", mode="dense", k=k)
        assert len({h.metadata["chunk_id"] for h in hits}) == len(hits) == k

    assert searches_during_builds(kb, search, sanguo_excerpts) > 3
    assert {Path(d.source).name for d in kb.list_documents()} == {"sanguo_a.txt", "sanguo_c.txt"}
    kb.close()


@pytest.fixture()
def milvus_server(tmp_path: Path) -> str:
    """A Milvus gRPC server in its own process (Milvus Lite's standalone server mode)."""
    import socket

    from pymilvus import MilvusClient, MilvusException

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(tmp_path / "server-data"), "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            MilvusClient(uri=uri, timeout=2).close()
            break
        except MilvusException:
            if time.monotonic() > deadline or server.poll() is not None:
                server.kill()
                pytest.fail("the Milvus server did not start")
            time.sleep(0.3)
    yield uri
    server.kill()
    server.wait(timeout=30)


def test_server_uri_lets_two_processes_share_a_knowledge_base(
    tmp_path: Path, milvus_server: str, tiny_embedding_path: Path, tiny_embeddings: Any,
    sanguo_excerpts: dict[str, Path],
) -> None:
    """With a server (unlike Milvus Lite) an ingest run adds files while the web UI keeps the
    knowledge base open; the recorded URI carries no credentials."""
    root = tmp_path / "root"
    port = milvus_server.rsplit(":", 1)[1]
    kb = make_kb(root, "m", tiny_embedding_path, tiny_embeddings, milvus_uri=f"http://root:Milvus@127.0.0.1:{port}")
    kb.add_files([sanguo_excerpts["a"]])
    vectors = kb.manifest["vectors"]
    assert vectors["uri"] == milvus_server and vectors["index"] == "AUTOINDEX"
    assert not (root / "milvus.db").exists()
    assert {Path(h.metadata["source"]).name for h in kb.search("董卓", mode="dense", k=5)} == {"sanguo_a.txt"}
    env = {**os.environ, "GLMKB_KB_ROOT": str(root), "GLMKB_EMBEDDING__DEVICE": "cpu"}
    child = subprocess.run(
        [sys.executable, "-m", "ingest", "build", str(sanguo_excerpts["b"]), "--kb", "m", "-q"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert child.returncode == 0, child.stderr
    sources = {Path(h.metadata["source"]).name for h in kb.search("董卓", mode="dense", k=500)}
    assert sources == {"sanguo_a.txt", "sanguo_b.txt"}, "the open knowledge base picks up the other process's build"
    assert len(kb.search("董卓", mode="dense", k=500)) == kb.manifest["counts"]["chunks"]
    kb.drop()
    from pymilvus import MilvusClient

    client = MilvusClient(uri=milvus_server)
    assert client.list_collections() == []
    client.close()


def test_missing_pymilvus_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_embedding_path: Path, tiny_embeddings: Any,
    sanguo_excerpts: dict[str, Path],
) -> None:
    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus -> ImportError
    kb = make_kb(tmp_path / "root", "m", tiny_embedding_path, tiny_embeddings)
    with pytest.raises(KnowledgeBaseError, match=r"pip install 'glmkb\[milvus\]'"):
        kb.add_files([sanguo_excerpts["a"]])
