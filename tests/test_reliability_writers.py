"""Writers racing, damaged knowledge bases, and long-running readers (glmkb #20, KB side).

Each test reproduces one finding of the second, adversarial reliability pass; its docstring
names the bug. The last test is the bar's property test: random schedules of real ``ingest``
processes (build/remove/drop on one keyword-only knowledge base) must end in a state that some
order of the reported successes explains, in real-time order.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ingest.cli import main as ingest_main
from kb import DamagedKnowledgeBaseError, KnowledgeBase, KnowledgeBaseError, storage
from kb.errors import KnowledgeBaseNotFound
from kb.lifecycle import list_summaries
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[1]
# A question with no chapter in it: one naming 第一回 is searched within chapter 1 only (kb.search).
QUERY = "刘备、关羽、张飞三人在桃园结义"
TEXTS = {
    "h.txt": "第一回 宴桃园豪杰三结义\n刘备、关羽、张飞三人在桃园结义，誓同生死。\n" * 8,
    "a.txt": "第二回 张翼德怒鞭督邮\n张飞鞭打督邮，刘备弃官而去。\n" * 8,
    "b.txt": "第三回 议温明董卓叱丁原\n董卓进京，吕布杀丁原。\n" * 8,
    "c.txt": "第四回 废汉帝陈留践位\n曹操献刀，逃出洛阳。\n" * 8,
}


def keyword_kb(root: Path, name: str = "t", **options: Any) -> KnowledgeBase:
    return KnowledgeBase(root, name, create=True, embedding_model="none", chunk_size=200, chunk_overlap=40, **options)


def sources(root: Path, name: str = "t") -> set[str]:
    kb = KnowledgeBase(root, name)
    try:
        return {d.source for d in kb.list_documents()}
    finally:
        kb.close()


def two_builds_land_on_first_call(root: Path, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[tuple]:
    """KB "t" built with h.txt; then the first call of ``module.name`` first lets another writer
    publish two builds (a.txt, b.txt), which collects the version that call was about to read.
    Returns the recorded arguments of that first call."""
    first = keyword_kb(root)
    first.add_files([write(root, "h.txt")])
    first.close()
    real = getattr(module, name)
    raced: list[tuple] = []

    def after_two_builds(*args: Any, **kwargs: Any) -> Any:
        if not raced:
            raced.append(args)
            other = KnowledgeBase(root, "t")
            other.add_files([write(root, "a.txt")])
            other.add_files([write(root, "b.txt")])
            other.close()
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, after_two_builds)
    return raced


def test_opening_follows_current_when_two_builds_collect_the_version_being_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (run 16, the random-schedule property test under load): a process opening the
    knowledge base read ``CURRENT`` (version A) and, while it hashed A's files without the writer
    lock, two other builds published B and C and collected A; the open failed with "knowledge base
    't' is damaged: .../bm25/data.csc.index.npy is missing" (exit 3). It now opens C."""
    import kb.version as version_module

    raced = two_builds_land_on_first_call(tmp_path, monkeypatch, version_module, "open_version")
    opened = KnowledgeBase(tmp_path, "t")
    try:
        assert raced and not (tmp_path / "t" / raced[0][1]).exists()  # the version read first is gone
        assert {Path(d.source).name for d in opened.list_documents()} == {"h.txt", "a.txt", "b.txt"}
    finally:
        opened.close()


def test_listing_follows_current_when_two_builds_collect_the_version_being_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same race for ``ingest list`` / ``current_manifest`` (manifest only, no hashing): the
    version whose manifest is about to be read is collected by two builds; the listing shows the
    knowledge base as it is now, not as damaged."""
    from kb.lifecycle import current_manifest

    raced = two_builds_land_on_first_call(tmp_path, monkeypatch, storage, "read_manifest")
    manifest = current_manifest(tmp_path / "t")
    assert raced and not raced[0][0].exists()
    assert len(manifest.documents) == 3


def test_damage_under_current_is_still_reported(tmp_path: Path) -> None:
    """Following ``CURRENT`` is only for versions collected meanwhile: a missing file in the
    version ``CURRENT`` still names is damage, reported once, not retried away."""
    kb = keyword_kb(tmp_path)
    kb.add_files([write(tmp_path, "h.txt")])
    kb.close()
    version = tmp_path / "t" / str(storage.read_pointer(tmp_path / "t"))
    next(p for p in (version / "bm25").iterdir() if p.is_file()).unlink()
    with pytest.raises(DamagedKnowledgeBaseError, match="is missing"):
        KnowledgeBase(tmp_path, "t")


# --- #1, #12, #14: writers and drops -------------------------------------------------------------


def test_a_build_waiting_through_a_drop_and_a_later_build_never_write_at_once(tmp_path: Path) -> None:
    """Regression (#20.1, data loss): the writer lock was an flock on ``kb_root/NAME/.lock`` and
    drop renamed the folder away while holding it, so a build that waited held a lock on the
    trashed file while a build started after the drop locked a new one: both reported "1 added"
    and the knowledge base kept only one of the documents."""
    keyword_kb(tmp_path).add_texts({"h.txt": TEXTS["h.txt"]})
    waiting = keyword_kb(tmp_path)  # opened (version loaded) before the drop
    results: dict[str, Any] = {}

    def build(label: str, kb: KnowledgeBase) -> None:
        try:
            results[label] = kb.add_texts({f"{label}.txt": TEXTS[f"{label}.txt"]}).added
        except Exception as e:  # noqa: BLE001 - reported below
            results[label] = e

    kb_dir = tmp_path / "t"
    with storage.write_lock(kb_dir):  # the drop, as it runs: under the writer lock
        a = threading.Thread(target=build, args=("a", waiting))
        a.start()
        time.sleep(0.3)  # A is reading its text, then waits for the lock
        dropped_versions = storage.versions(kb_dir)
        trash = storage.move_to_trash(kb_dir)
    b = threading.Thread(target=build, args=("b", keyword_kb(tmp_path)))
    b.start()
    a.join(30)
    b.join(30)
    assert results == {"a": ["a.txt"], "b": ["b.txt"]}
    assert sources(tmp_path) == {"a.txt", "b.txt"}, "both reported successes are in the knowledge base"
    assert not trash.exists() or storage.versions(trash) == dropped_versions, "nothing was written into the dropped folder"


def test_refresh_after_a_drop_forgets_the_knowledge_base(tmp_path: Path) -> None:
    """Regression (#20.1): a reader's refresh kept the dropped version in memory when CURRENT was
    gone and went on answering from it."""
    keyword_kb(tmp_path).add_texts({"h.txt": TEXTS["h.txt"]})
    reader = KnowledgeBase(tmp_path, "t")
    assert reader.search("刘备", mode="bm25")
    KnowledgeBase(tmp_path, "t").drop()
    assert reader.refresh() is True and reader.version is None
    with pytest.raises(KnowledgeBaseNotFound):
        reader.search("刘备", mode="bm25")
    with pytest.raises(KnowledgeBaseNotFound, match="dropped"):
        reader.remove(["h.txt"])


def test_drop_during_a_builds_reading_phase(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (#20.12): a drop while a build read its files made the build say "the
    knowledge base is unchanged: free disk space..." (both false) and left a folder holding
    only ``.lock`` that no command listed or dropped. Now the build, which was asked to create
    the knowledge base, creates it afresh after the drop, and nothing is left over."""
    from kb import build

    keyword_kb(tmp_path).add_texts({"h.txt": TEXTS["h.txt"]})
    source = tmp_path / "a.txt"
    source.write_text(TEXTS["a.txt"], encoding="utf-8")
    real_scan = build.Incoming.scan

    def scan_then_drop(*args: Any) -> build.Incoming:
        incoming = real_scan(*args)
        KnowledgeBase(tmp_path, "t").drop()
        return incoming

    monkeypatch.setattr(build.Incoming, "scan", scan_then_drop)
    report = keyword_kb(tmp_path).add_files([source])
    assert report.added == [str(source)]
    assert sources(tmp_path) == {str(source)}
    assert not (tmp_path / "t" / ".lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == ["a.txt", "t"]


def test_two_first_builds_with_different_settings_never_silently_differ(tmp_path: Path) -> None:
    """Regression (#20.14): of two concurrent first builds, the one that asked for
    ``--chunk-size 200`` silently got the other's chunk size 400 and exited 0. It is refused
    now, as it is on an existing knowledge base; one that asked for nothing adopts the KB."""
    asked = KnowledgeBase(tmp_path, "t", create=True, embedding_model="none", chunk_size=200)
    plain = KnowledgeBase(tmp_path, "t", create=True, embedding_model="none")
    first = KnowledgeBase(tmp_path, "t", create=True, embedding_model="none", chunk_size=400)
    first.add_texts({"h.txt": TEXTS["h.txt"]})
    with pytest.raises(KnowledgeBaseError, match="chunk_size 400, not 200"):
        asked.add_texts({"a.txt": TEXTS["a.txt"]})
    assert plain.add_texts({"b.txt": TEXTS["b.txt"]}).added == ["b.txt"]
    assert sources(tmp_path) == {"h.txt", "b.txt"} and plain.chunk_size == 400


# --- #2, #3, #13, #15: damage, trash, listing ----------------------------------------------------


def damage(kb_dir: Path, target: str, how: str) -> None:
    """Damage one file of the live version (``CURRENT`` itself for "pointer")."""
    version = storage.read_pointer(kb_dir)
    assert version is not None
    path = kb_dir / storage.POINTER if target == "pointer" else kb_dir / version / target
    if target == "version":
        import shutil

        shutil.rmtree(kb_dir / version)
        return
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "empty":
        path.write_bytes(b"")
    else:  # flip one bit in the middle
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x04
        path.write_bytes(bytes(data))


DAMAGE = [
    ("docstore.sqlite", "truncate"), ("docstore.sqlite", "flip"), ("bm25/data.csc.index.npy", "truncate"),
    ("bm25/vocab.index.json", "flip"), ("manifest.json", "truncate"), ("manifest.json", "empty"),
    ("manifest.json", "flip"), ("pointer", "truncate"), ("pointer", "empty"), ("version", "delete"),
]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = ingest_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("target", "how"), DAMAGE, ids=[f"{t}-{h}" for t, h in DAMAGE])
def test_every_command_answers_a_damaged_kb_in_one_line_and_drop_and_doctor_recover(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, how: str
) -> None:
    """Regression (#20.2/#20.3): every damage message said "rebuild it (ingest drop, then ingest
    build)" but drop and build refused with that same message (11 damage kinds, 0 recoverable
    without rm -rf), and a flipped manifest bit gave raw KeyError tracebacks and hid the healthy
    knowledge bases from ``ingest list``. Now: one line naming the KB and the fix, list shows the
    others, doctor repairs (or says to drop), build repairs before adding, drop always works."""
    root = str(tmp_path)
    base = keyword_kb(tmp_path)
    base.add_texts({"h.txt": TEXTS["h.txt"]})
    base.add_texts({"a.txt": TEXTS["a.txt"]})  # the kept previous version holds h.txt only
    keyword_kb(tmp_path, "ok").add_texts({"b.txt": TEXTS["b.txt"]})
    damage(tmp_path / "t", target, how)

    code, out, err = run_cli(capsys, "list", "--kb-root", root)
    assert code == 0 and "ok\t1 documents" in out
    if target in ("manifest.json", "pointer", "version"):  # listing reads pointers and manifests only (#20.15)
        assert "t\tdamaged: " in out and "doctor --kb t" in out
    code, out, err = run_cli(capsys, "query", "刘备", "--kb", "t", "--kb-root", root, "--mode", "bm25")
    assert code != 0 and err.count("\n") == 1 and "'t'" in err and "Traceback" not in err and "KeyError" not in err

    code, out, err = run_cli(capsys, "doctor", "--kb", "t", "--kb-root", root)
    assert code == 3 and "t: damaged" in out
    code, out, err = run_cli(capsys, "doctor", "--kb", "t", "--kb-root", root, "--repair", "-q")
    assert code == 0, err
    recovered = sources(tmp_path)
    assert recovered in ({"h.txt", "a.txt"}, {"h.txt"}), out  # rebuilt from the text, or rolled back
    assert KnowledgeBase(tmp_path, "t").search("刘备", mode="bm25")

    damage(tmp_path / "t", target, how)
    code, out, err = run_cli(capsys, "build", str(write(tmp_path, "c.txt")), "--kb", "t", "--kb-root", root, "-q")
    assert code == 0 and "1 added" in out and "warning:" in err, err
    assert str(tmp_path / "c.txt") in sources(tmp_path)

    damage(tmp_path / "t", target, how)
    code, out, err = run_cli(capsys, "drop", "--kb", "t", "--kb-root", root)
    assert code == 0 and not (tmp_path / "t").exists()
    assert KnowledgeBase.list_names(tmp_path) == ["ok"]


def test_doctor_rebuilds_the_vectors_of_a_damaged_dense_kb(
    tmp_path: Path, tiny_embedding_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression (#20.2): a truncated FAISS index left a dense knowledge base unrecoverable
    without rm -rf; ``ingest doctor --repair`` re-embeds its stored chunks into a new version."""
    kb = KnowledgeBase(tmp_path, "d", create=True, embedding_model=str(tiny_embedding_path), device="cpu")
    kb.add_texts({"h.txt": TEXTS["h.txt"], "a.txt": TEXTS["a.txt"]})
    kb.close()
    damage(tmp_path / "d", "index.faiss", "truncate")
    with pytest.raises(DamagedKnowledgeBaseError, match="index.faiss"):
        KnowledgeBase(tmp_path, "d")
    code, out, err = run_cli(capsys, "doctor", "--kb", "d", "--kb-root", str(tmp_path), "--repair", "-q")
    assert code == 0 and "rebuilt version" in out, err
    repaired = KnowledgeBase(tmp_path, "d", device="cpu")
    assert {h.metadata["source"] for h in repaired.search(QUERY, mode="dense", k=50)} == {"h.txt", "a.txt"}


def write(folder: Path, name: str) -> Path:
    path = folder / name
    path.write_text(TEXTS[name], encoding="utf-8")
    return path


def test_single_bit_flips_in_a_manifest_are_damage_never_keyerror(tmp_path: Path) -> None:
    """Regression (#20.3): >= 45 of ~1,600 single-bit flips of manifest.json gave raw KeyError
    tracebacks from list, query, build, remove and drop; the manifest is now checksummed and
    schema-checked. 200 seeded flips: each one is refused as damage, at open and in listings."""
    keyword_kb(tmp_path).add_texts({"h.txt": TEXTS["h.txt"]})
    version_dir = tmp_path / "t" / storage.read_pointer(tmp_path / "t")
    original = (version_dir / storage.MANIFEST).read_bytes()
    rng = random.Random(20)
    for bit in rng.sample(range(len(original) * 8), 200):
        data = bytearray(original)
        data[bit // 8] ^= 1 << (bit % 8)
        (version_dir / storage.MANIFEST).write_bytes(bytes(data))
        with pytest.raises(DamagedKnowledgeBaseError, match="'t' is damaged.*doctor --kb t"):
            KnowledgeBase(tmp_path, "t")
        assert list_summaries(tmp_path)[0].damaged


def test_trash_left_by_a_killed_drop_is_never_a_knowledge_base(tmp_path: Path) -> None:
    """Regression (#20.13): kill -9 during drop left ``.trash-t-PID-NS`` folders that ``ingest
    list``, the UI and ``GET /v1/kb`` showed as a knowledge base no command could remove. They
    are never listed, and the next listing or write deletes them."""
    keyword_kb(tmp_path).add_texts({"h.txt": TEXTS["h.txt"]})
    keyword_kb(tmp_path, "u").add_texts({"a.txt": TEXTS["a.txt"]})
    storage.move_to_trash(tmp_path / "u")  # what a drop killed right after its rename leaves
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".trash-")]
    assert KnowledgeBase.list_names(tmp_path) == ["t"]
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".trash-")]
    storage.move_to_trash(tmp_path / "t")
    keyword_kb(tmp_path, "v").add_texts({"b.txt": TEXTS["b.txt"]})
    assert sorted(p.name for p in tmp_path.iterdir()) == [storage.LOCK_DIR, "v"]


def test_listing_reads_manifests_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (#20.15): ``ingest list`` loaded every knowledge base (docstore, BM25, vectors,
    file hashes) for its counts: 15 s and 2.7 GiB beside a 1 GB one."""
    from kb import bm25_index, docstore

    keyword_kb(tmp_path).add_texts({"h.txt": TEXTS["h.txt"], "a.txt": TEXTS["a.txt"]})

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("listing opened a version")

    monkeypatch.setattr(docstore.Docstore, "open_readonly", forbidden)
    monkeypatch.setattr(bm25_index.BM25Index, "load", forbidden)
    monkeypatch.setattr(storage, "file_sha256", forbidden)
    [summary] = list_summaries(tmp_path)
    assert (summary.name, summary.documents, summary.embedding, summary.error) == ("t", 2, "none", None)


def test_a_build_never_holds_the_base_and_the_new_bm25_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (#20.15): adding one small file to a 1 GB knowledge base took 5.05 GiB because
    the base version's BM25 stayed loaded while the new one was built."""
    from kb import bm25_index

    kb = keyword_kb(tmp_path)
    kb.add_texts({"h.txt": TEXTS["h.txt"]})
    assert kb.search("刘备", mode="bm25")  # the base BM25 is loaded now
    base = kb._live.version
    real_build = bm25_index.BM25Index.build.__func__
    held: list[bool] = []

    def build(cls: type, *args: Any, **kwargs: Any) -> Any:
        held.append(base._bm25 is not None)
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(bm25_index.BM25Index, "build", classmethod(build))
    kb.add_texts({"a.txt": TEXTS["a.txt"]})
    assert held == [False]
    assert kb.search("张飞", mode="bm25")


# --- #10: long-running readers ------------------------------------------------------------------


def open_docstores(under: Path) -> list[str]:
    """Docstore files under ``under`` this process holds open (deleted ones end in "(deleted)")."""
    fds = Path("/proc/self/fd")
    names = []
    for fd in fds.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith(str(under)) and ("docstore.sqlite" in target):
            names.append(target)
    return names


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_replaced_versions_close_their_docstores(tmp_path: Path) -> None:
    """Regression (#20.10): servers held deleted versions' SQLite files open ("left to garbage
    collection"): 16-29 deleted docstores after 40 builds of a 30 MiB knowledge base. A replaced
    version now closes its docstore as soon as its last reader is done."""
    kb = keyword_kb(tmp_path)
    for i in range(12):
        kb.add_texts({f"d{i}.txt": f"第{i + 1}回 标题\n" + "刘备与关羽张飞说话。" * 30})
        assert kb.search("刘备", mode="bm25")
    assert len(open_docstores(tmp_path)) <= 1
    held = kb._live.version
    held.acquire()  # a search still reading the old version while a build publishes
    kb.add_texts({"late.txt": TEXTS["a.txt"]})
    assert not held.closed and held.docstore.documents(), "an in-flight reader keeps its version open"
    held.release()
    assert held.closed and len(open_docstores(tmp_path)) <= 1
    assert not [t for t in open_docstores(tmp_path) if "(deleted)" in t]


def test_search_retries_only_on_a_stale_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression (glmkb #17.4): ``search`` retried on any KnowledgeBaseError (a refresh and a
    second search for a bad mode or a keyword-only KB asked for dense)."""
    from kb import knowledge_base

    kb = keyword_kb(tmp_path)
    kb.add_texts({"h.txt": TEXTS["h.txt"]})
    calls = []
    real = knowledge_base.search_version
    monkeypatch.setattr(knowledge_base, "search_version", lambda *a, **k: calls.append(1) or real(*a, **k))
    with pytest.raises(KnowledgeBaseError, match="keyword-only"):
        kb.search("刘备", mode="dense")
    assert calls == [1]


# --- issue 18: creating, auto embedding, adding vectors ------------------------------------------


def test_create_writes_an_empty_kb_that_every_listing_shows_and_drop_removes_its_folder(tmp_path: Path) -> None:
    """Regression (#18.7): UI-created knowledge bases lived only in memory until their first
    build, and failed or deleted ones left folders holding only ``.lock``."""
    kb = keyword_kb(tmp_path, "new")
    kb.create()
    assert KnowledgeBase.list_names(tmp_path) == ["new"] and kb.exists and kb.list_documents() == []
    assert list_summaries(tmp_path)[0].documents == 0
    with pytest.raises(KnowledgeBaseError, match="already exists"):
        keyword_kb(tmp_path, "new").create()
    KnowledgeBase(tmp_path, "new").drop()
    assert not (tmp_path / "new").exists() and KnowledgeBase.list_names(tmp_path) == []


def test_default_embedding_that_cannot_be_found_builds_keyword_only_with_one_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (#18.3): ``ingest build novel.txt`` failed offline because the default
    embedder could not be downloaded; every new KB needed ``--embedding none``."""
    from configs import load_settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    settings = load_settings(None, kb_root=str(tmp_path), embedding={"model": "nobody/no-such-model"})
    with caplog.at_level("WARNING"):
        kb = KnowledgeBase.from_settings(settings, name="t", create=True)
        kb.add_texts({"h.txt": TEXTS["h.txt"]})
    assert kb.keyword_only and kb.search("刘备")
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("kb")]
    assert len(warnings) == 1 and "--embedding" in warnings[0].getMessage()
    strict = load_settings(None, kb_root=str(tmp_path), embedding={"model": "nobody/no-such-model", "if_unavailable": "error"})
    with pytest.raises(KnowledgeBaseError, match="no-such-model"):
        KnowledgeBase.from_settings(strict, name="u", create=True)


def test_an_embedding_model_given_to_a_keyword_only_kb_adds_vectors(tmp_path: Path, tiny_embedding_path: Path) -> None:
    """Regression (#18.3): ``ingest build --embedding DIR`` on a keyword-only knowledge base was
    refused; it now re-embeds the existing chunks into a new version and adds the new files."""
    keyword_kb(tmp_path).add_texts({"h.txt": TEXTS["h.txt"]})
    kb = KnowledgeBase(tmp_path, "t", embedding_model=str(tiny_embedding_path), device="cpu")
    report = kb.add_texts({"a.txt": TEXTS["a.txt"]})
    assert report.chunks_embedded > 0 and report.added == ["a.txt"] and "vectors added" in report.summary()
    reopened = KnowledgeBase(tmp_path, "t", device="cpu")
    assert not reopened.keyword_only and reopened.store == "faiss"
    hits = reopened.search(QUERY, mode="dense", k=50)
    assert {h.metadata["source"] for h in hits} == {"h.txt", "a.txt"}


# --- the bar: random schedules of real processes --------------------------------------------------

# Imports glmkb once, then runs each schedule: one forked child per command, all started together
# (after a seeded stagger); each reports its exit status and its start/end times.
RUNNER = textwrap.dedent(
    """
    import json, os, sys, time
    import ingest.cli, kb.tokenizing
    kb.tokenizing.tokenize("预热")
    for line in sys.stdin:
        job = json.loads(line)
        children = []
        for i, (delay, argv) in enumerate(job["commands"]):
            time.sleep(delay)
            out = os.path.join(job["out"], f"{i}.txt")
            started = time.monotonic()
            pid = os.fork()
            if pid == 0:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
                os.dup2(fd, 1)
                os.dup2(fd, 2)
                os._exit(ingest.cli.main(argv))
            children.append((pid, started))
        results = []
        for pid, started in children:
            _, status = os.waitpid(pid, 0)
            results.append({"code": os.waitstatus_to_exitcode(status), "start": started, "end": time.monotonic()})
        print(json.dumps(results), flush=True)
    """
)


def apply(state: frozenset[str] | None, op: tuple[str, str]) -> frozenset[str] | None | str:
    """The model: ``state`` is the set of documents (None: no knowledge base); "invalid" if the
    operation could not have succeeded from ``state``."""
    kind, doc = op
    if kind == "build":
        return (state or frozenset()) | {doc}
    if kind == "remove":
        return state - {doc} if state is not None and doc in state else "invalid"
    return None if state is not None else "invalid"  # drop


def explained(start: frozenset[str] | None, ops: list[tuple[str, str]], final: frozenset[str] | None,
              times: list[tuple[float, float]]) -> bool:
    """Whether some order of ``ops`` that respects real time (an op that ended before another
    started comes first) takes ``start`` to ``final`` with every op valid."""
    for order in itertools.permutations(range(len(ops))):
        if any(times[b][1] < times[a][0] for i, a in enumerate(order) for b in order[i + 1 :]):
            continue
        state: Any = start
        for i in order:
            state = apply(state, ops[i])
            if state == "invalid":
                break
        else:
            if state == final:
                return True
    return False


@pytest.mark.slow
def test_random_schedules_of_build_remove_drop_processes_match_a_model(tmp_path: Path) -> None:
    """The bar of glmkb #20: any interleaving of build/remove/drop on one knowledge base from
    several processes ends with every reported success reflected in the knowledge base and
    every failure reported (one line, exit 2). Six seeded schedules of four real ``ingest``
    processes each (forked from one warm interpreter so they overlap), checked against a model
    of what succeeded: some real-time-respecting order of the successes explains the end state."""
    for name in TEXTS:
        write(tmp_path, name)
    rng = random.Random(int(os.environ.get("GLMKB_TEST_SEED", "2026")))
    runner = subprocess.Popen([sys.executable, "-c", RUNNER], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert runner.stdin is not None and runner.stdout is not None
    try:
        for schedule in range(6):
            root = tmp_path / f"root{schedule}"
            keyword_kb(root).add_files([tmp_path / "h.txt"])
            start = frozenset({str(tmp_path / "h.txt")})
            ops: list[tuple[str, str]] = []
            for _ in range(4):
                kind = rng.choice(["build", "build", "remove", "drop"])
                ops.append((kind, str(tmp_path / rng.choice(list(TEXTS)))))
            commands = []
            for kind, doc in ops:
                argv = {"build": ["build", doc, "--embedding", "none", "--chunk-size", "200", "--chunk-overlap", "40", "-q"],
                        "remove": ["remove", doc], "drop": ["drop"]}[kind]
                commands.append((rng.uniform(0, 0.15), [*argv, "--kb", "t", "--kb-root", str(root)]))
            out = tmp_path / f"out{schedule}"
            out.mkdir()
            runner.stdin.write(json.dumps({"commands": commands, "out": str(out)}) + "\n")
            runner.stdin.flush()
            results = json.loads(runner.stdout.readline())
            logs = [(out / f"{i}.txt").read_text(encoding="utf-8") for i in range(len(ops))]
            for result, log in zip(results, logs, strict=True):
                assert result["code"] in (0, 2), log
                assert "Traceback" not in log
                if result["code"]:
                    assert log.count("\n") == 1 and log.startswith("ingest: error:"), log
            done = [i for i, r in enumerate(results) if r["code"] == 0]
            final = frozenset(sources(root)) if KnowledgeBase.list_names(root) else None
            print(f"schedule {schedule}: {ops} -> codes {[r['code'] for r in results]}, final {final}")
            assert explained(start, [ops[i] for i in done], final,
                             [(results[i]["start"], results[i]["end"]) for i in done]), (ops, results, final, logs)
            assert not [p for p in root.iterdir() if p.name.startswith((".trash-", ".tmp-"))]
    finally:
        runner.stdin.close()
        runner.wait(timeout=60)
