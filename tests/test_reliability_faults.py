"""Faults: builds killed with SIGKILL, full disks, and models or servers that are missing.

- ``kill -9`` of ``ingest build`` at seeded random moments, many times, for a keyword-only and a
  dense (tiny embedding model) knowledge base: afterwards the knowledge base loads and equals
  exactly the state before the build or exactly the state after it (document hashes, chunk
  ids, offsets and texts, BM25 and dense search results), never a mix. tests/test_kb_crash.py
  kills at each named step of a publish and four times during a real whole-novel build; this
  file adds many random moments of small builds. To fit many trials in little time, the builds
  run in children forked from a "zygote" process that has already imported glmkb (Python's
  start-up and the torch import take seconds on the CI machine and would swallow most kills):
  each child runs exactly ``ingest.cli.main(["build", ...])``, the code of ``python -m ingest
  build``. The seed and every delay and outcome are printed (``pytest -s`` shows them).
- A full disk (a real 8 MiB tmpfs where the machine allows a mount, else skipped; plus
  ENOSPC/"database or disk is full" injected at every write step, which always runs): the
  build fails with one clear line and the old knowledge base is intact.
- A chat model that fails to load, an embedding model that is missing, an OpenAI-compatible
  server that is down: clear messages, and the UI and the API keep serving everything else.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kb import KnowledgeBase, KnowledgeBaseError, storage

# Gradio's queue statistics trip pandas 3 deprecations; not ours to fix.
pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]
REPO = Path(__file__).resolve().parents[1]
SEED = int(os.environ.get("GLMKB_TEST_SEED", "20261121"))
QUERIES = ["玄德 关公 桃园结义", "董卓 吕布", "曹操 献刀", "张角 黄巾"]
KB = "k"

# A process that imports glmkb once, then forks one child per trial; the child runs
# ``ingest build`` exactly as the command line does and the parent SIGKILLs it after the
# trial's delay (measured from the fork), reporting whether the kill landed before the exit.
ZYGOTE = textwrap.dedent(
    """
    import json, os, signal, sys, time
    import ingest.cli, ingest.cmd_build, kb, kb.tokenizing
    from kb.tokenizing import tokenize
    tokenize("预热")  # jieba's dictionary, loaded before forking
    if sys.argv[1] == "dense":
        import sentence_transformers, langchain_huggingface  # imported only; torch runs in the child
    print("ready", flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        delay, pointer = job["delay"], job.get("swap_of")  # swap_of: kill job["after"] s after CURRENT changes
        first = open(pointer).read() if pointer else None
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            sys.stdout = open(os.devnull, "w")
            sys.stderr = open(os.devnull, "w")
            os._exit(ingest.cli.main(job["argv"]))
        killed = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if delay is None and pointer and open(pointer).read() != first:
                delay = time.monotonic() - started + job["after"]
            if delay is not None and time.monotonic() - started >= delay:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                killed = True
                break
            time.sleep(0.001)
        elapsed = time.monotonic() - started
        print(json.dumps({"killed": killed, "status": status, "elapsed": elapsed}), flush=True)
    """
)


class Zygote:
    """The forking build server (see ``ZYGOTE``)."""

    def __init__(self, kind: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", ZYGOTE, kind],
            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"},
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"

    def build(self, argv: list[str], delay: float | None, *, after_swap_of: Path | None = None,
              after: float = 0.0) -> dict[str, Any]:
        """Run one build; SIGKILL it ``delay`` s after the fork, or ``after`` s after it swaps
        the ``CURRENT`` of ``after_swap_of`` (None, None: let it finish)."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        job = {"argv": argv, "delay": delay, "swap_of": str(after_swap_of / storage.POINTER) if after_swap_of else None,
               "after": after}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def kb_state(root: Path, *, embeddings: Any = None) -> tuple:
    """Everything a reader can observe, minus the version's random name and timestamps."""
    kb = KnowledgeBase(root, KB)  # verifies every file against the manifest's hashes
    if embeddings is not None:
        kb.set_embeddings(embeddings)
    try:
        docs = tuple(sorted((d.doc_id, d.source, d.sha256, d.chars, d.chunks, d.chapters) for d in kb.list_documents()))
        chunks = tuple(
            (c.metadata["chunk_id"], c.metadata["start"], c.metadata["end"], c.metadata["chapter"], c.page_content)
            for d in kb.list_documents()
            for c in kb.get_chunks(d.doc_id)
        )
        modes = ["bm25"] if kb.keyword_only else ["bm25", "dense", "hybrid"]
        hits = tuple(
            (mode, q, tuple((h.metadata["chunk_id"], round(h.metadata["score"], 4)) for h in kb.search(q, mode=mode, k=5)))
            for mode in modes
            for q in QUERIES
        )
        return docs, chunks, hits
    finally:
        kb.close()


@contextlib.contextmanager
def watch_build(kb_dir: Path) -> Iterator[dict[str, float]]:
    """Seconds from now until a build first creates a staging folder in ``kb_dir`` (``staging``)
    and until it swaps ``CURRENT`` (``swap``), polled every 0.5 ms."""
    import threading

    seen: dict[str, float] = {}
    stop = threading.Event()
    started = time.monotonic()
    pointer = storage.read_pointer(kb_dir)

    def poll() -> None:
        while not stop.is_set() and "swap" not in seen:
            now = time.monotonic() - started
            if "staging" not in seen and any(p.name.startswith(storage.TMP_PREFIX) and p.is_dir() for p in kb_dir.iterdir()):
                seen["staging"] = now
            with contextlib.suppress(KnowledgeBaseError):
                if storage.read_pointer(kb_dir) != pointer:
                    seen["swap"] = now
            time.sleep(0.0005)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        yield seen
    finally:
        stop.set()
        thread.join()


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in (root / KB).iterdir() if p.name.startswith(storage.TMP_PREFIX))


def variant(base: str, trial: int, rng: random.Random) -> str:
    """The source file's text for one trial: changed (so every build replaces it), sometimes longer."""
    words = "".join(rng.choice("天下大势分久必合合久必分周末七国分争并入于秦") for _ in range(rng.randint(5, 60)))
    extra = f"\n第{trial}次修订：{words}。" * rng.randint(1, 30)
    return base + extra


def expected_after(root: Path, source: Path, scratch: Path, *, embeddings: Any) -> tuple:
    """What a completed build of ``source`` gives: the same build, in this process, on a copy."""
    shutil.rmtree(scratch, ignore_errors=True)
    shutil.copytree(root, scratch)
    kb = KnowledgeBase(scratch, KB)
    if embeddings is not None:
        kb.set_embeddings(embeddings)
    kb.add_files([source])
    kb.close()
    return kb_state(scratch, embeddings=embeddings)


@pytest.fixture(scope="module")
def source_text(sanguo_path: Path) -> str:
    from tests.fixtures.kb import chapter_excerpt

    return chapter_excerpt(sanguo_path.read_text(encoding="utf-8"), 1, 1)


@pytest.fixture(scope="module")
def tiny_embeddings(tiny_embedding_path: Path) -> Any:
    from kb.embedding import load_embeddings

    return load_embeddings(str(tiny_embedding_path), device="cpu")


RECALIBRATE_EVERY = 5  # trials between calibrations


@dataclass(order=True, frozen=True)
class Timing:
    """Seconds from the fork: the build's exit, its staging folder, its swap of ``CURRENT``."""

    end: float
    writing: float
    swap: float

TOP_UP = 6  # aimed trials at most, when the planned ones all fell on one side of the swap


def calibrate(zygote: Zygote, root: Path, scratch: Path, source: Path, source_text: str, rng: random.Random, *,
              builds: int) -> Timing:
    """How long a build takes now, and when it starts writing and swaps ``CURRENT``: the median
    of ``builds`` builds on a copy of ``root`` (the first build of a process can be slow)."""
    timings = []
    for _ in range(builds):
        source.write_text(variant(source_text, -1, rng), encoding="utf-8")
        shutil.rmtree(scratch, ignore_errors=True)
        shutil.copytree(root, scratch)
        with watch_build(scratch / KB) as seen:
            result = zygote.build(["build", str(source), "--kb", KB, "--kb-root", str(scratch), "-q"], None)
        assert os.WIFEXITED(result["status"]) and os.WEXITSTATUS(result["status"]) == 0, result
        end = result["elapsed"]
        writing = seen.get("staging", end / 2)
        timings.append(Timing(end=end, writing=writing, swap=seen.get("swap", writing + 0.8 * (end - writing))))
    return sorted(timings)[len(timings) // 2]


def covered(log: list[dict[str, Any]], *, strictly: bool = False) -> bool:
    """The kills landed all over the build: some before the swap (old), some after it (new;
    ``strictly``: a killed build, not one that finished first)."""
    killed = {e["outcome"] for e in log if e["killed"]}
    return "old" in killed and "new" in (killed if strictly else {e["outcome"] for e in log})


def kill_delay(phase: str, fraction: float, timing: Timing) -> float:
    """Seconds after the fork to kill at ``fraction`` of ``phase``: the whole build and a little
    past it, its writing phase (and a little past the end), or before the swap."""
    end, writing = timing.end, timing.writing
    low, high = {
        "whole": (0.0, 1.2 * end),
        "writing": (max(0.0, writing - 0.005), end + 0.2 * (end - writing)),
        "before-swap": (0.0, timing.swap),
    }[phase]
    return low + (high - low) * fraction


def run_kill_trials(
    tmp_path: Path, source_text: str, *, kind: str, trials: int, embedding: str, embeddings: Any
) -> list[dict[str, Any]]:
    root, scratch, source = tmp_path / "root", tmp_path / "scratch", tmp_path / "novel.txt"
    source.write_text(source_text, encoding="utf-8")
    first = KnowledgeBase(root, KB, create=True, embedding_model=embedding, chunk_size=200, chunk_overlap=40)
    if embeddings is not None:
        first.set_embeddings(embeddings)
    first.add_files([source])
    first.close()
    rng = random.Random(SEED)
    argv = ["build", str(source), "--kb", KB, "--kb-root", str(root), "-q"]
    zygote = Zygote(kind)
    log: list[dict[str, Any]] = []

    def trial(number: int, delay: float | None, **at_swap: Any) -> dict[str, Any]:
        before = kb_state(root, embeddings=embeddings)
        source.write_text(variant(source_text, number, rng), encoding="utf-8")
        after = expected_after(root, source, scratch, embeddings=embeddings)
        assert after != before
        result = zygote.build(argv, delay, **at_swap)
        stray = leftovers(root)
        now = kb_state(root, embeddings=embeddings)
        outcome = "old" if now == before else "new" if now == after else "MIXED"
        if not result["killed"]:
            assert os.WIFEXITED(result["status"]) and os.WEXITSTATUS(result["status"]) == 0, result
        entry = {"trial": number, "delay": "after swap" if delay is None else round(delay, 4), "killed": result["killed"],
                 "elapsed": round(result["elapsed"], 4), "outcome": outcome, "leftovers": len(stray)}
        print(f"[{kind}] {entry}")
        log.append(entry)
        assert outcome != "MIXED", f"trial {number} (seed {SEED}, delay {entry['delay']} s) left a mixed state"
        if not result["killed"]:
            assert outcome == "new", entry
        return entry

    try:
        # Kills are planned as fractions of the build, stratified: half at random moments of the
        # i-th slice of the whole build and a little past it (loading, splitting, embedding,
        # writing, publishing), half in the i-th slice of the writing phase alone, where a kill
        # could leave a half-written version. They become seconds through a calibration (builds
        # on a copy, not counted as trials) repeated every few trials: on a shared machine a
        # build's time drifts with the load (one calibrated at 0.44 s ran 3x slower once other
        # work started, every kill landed before the swap and the coverage check failed).
        half = trials // 2
        plan = [("whole", (i + rng.random()) / half) for i in range(half)]
        plan += [("writing", (i + rng.random()) / (trials - half)) for i in range(trials - half)]
        rng.shuffle(plan)
        timing = calibrate(zygote, root, scratch, source, source_text, rng, builds=3)
        print(f"\n[{kind}] seed {SEED}; calibrated build {timing.end:.3f} s, writing from {timing.writing:.3f} s, "
              f"swap at {timing.swap:.3f} s; {trials} kills")
        for number, (phase, fraction) in enumerate(plan, start=1):
            if number > 1 and (number - 1) % RECALIBRATE_EVERY == 0:
                timing = calibrate(zygote, root, scratch, source, source_text, rng, builds=1)
            trial(number, kill_delay(phase, fraction, timing))
        # Coverage (kills on both sides of the swap) is about the test's power, not the code's:
        # if the load still shifted every kill to one side, or none fell between the swap and
        # the exit (a window of ~10 ms), aim a few more at the side that is missing: before the
        # swap by a fresh calibration, after it by watching CURRENT.
        for number in range(trials + 1, trials + 1 + TOP_UP):
            if covered(log, strictly=True):
                break
            if "old" not in {e["outcome"] for e in log if e["killed"]}:
                timing = calibrate(zygote, root, scratch, source, source_text, rng, builds=1)
                trial(number, kill_delay("before-swap", rng.random(), timing))
            else:
                trial(number, None, after_swap_of=root / KB, after=0.002 * rng.random())
    finally:
        zygote.close()
    assert covered(log), log
    # The next build cleans up whatever the killed ones left behind.
    final = KnowledgeBase(root, KB)
    if embeddings is not None:
        final.set_embeddings(embeddings)
    source.write_text(source_text, encoding="utf-8")
    final.add_files([source])
    final.close()
    assert leftovers(root) == [] and len(storage.versions(root / KB)) <= 2
    return log


def test_kill_9_at_random_moments_keyword_only(tmp_path: Path, source_text: str) -> None:
    log = run_kill_trials(tmp_path, source_text, kind="keyword", trials=40, embedding="none", embeddings=None)
    assert 40 <= len(log) <= 40 + TOP_UP


@pytest.mark.slow
def test_kill_9_at_random_moments_dense(tmp_path: Path, source_text: str, tiny_embedding_path: Path,
                                        tiny_embeddings: Any) -> None:
    log = run_kill_trials(tmp_path, source_text, kind="dense", trials=20, embedding=str(tiny_embedding_path),
                          embeddings=tiny_embeddings)
    assert 20 <= len(log) <= 20 + TOP_UP


# ------------------------------------------------------------------------------ full disks


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs (needs root and a mount-capable sandbox; skipped cleanly otherwise)."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs here ({e})")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, timeout=30)


def fill(disk: Path, *, leave: int) -> Path:
    """Fill ``disk`` with a filler file until ``leave`` bytes are free."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


def disk_full_line(err: str) -> str:
    """The CLI's one error line, checked for being one clear line about the full disk."""
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("ingest: error: "), err
    assert any(reason in err for reason in ("No space left on device", "disk is full", "KiB free on that disk")), err
    assert "unchanged" in err, err
    return err


@pytest.mark.parametrize("embedding", ["none", "tiny"])
def test_a_full_disk_fails_the_build_cleanly_and_keeps_the_old_knowledge_base(
    tiny_disk: Path, sanguo_path: Path, tiny_embedding_path: Path, tiny_embeddings: Any,
    capsys: pytest.CaptureFixture[str], embedding: str,
) -> None:
    """Free space from none to almost enough: every attempt fails at some write step (copying
    the docstore, SQLite inserts, BM25 or FAISS files, the manifest, the pointer); each fails
    with one line naming the full disk, leaves no staging folder, and the knowledge base still
    loads and equals what it was. With space freed, the same build succeeds."""
    from ingest.cli import main as ingest

    model = "none" if embedding == "none" else str(tiny_embedding_path)
    embeddings = None if embedding == "none" else tiny_embeddings
    root = tiny_disk / "root"
    small, large = tiny_disk.parent / "small.txt", tiny_disk.parent / "large.txt"
    text = sanguo_path.read_text(encoding="utf-8")
    small.write_text(text[:20_000], encoding="utf-8")
    large.write_text(text[:150_000], encoding="utf-8")
    assert ingest(["build", str(small), "--kb", KB, "--kb-root", str(root), "--embedding", model, "-q"]) == 0
    before = kb_state(root, embeddings=embeddings)
    capsys.readouterr()
    failures = []
    for leave in (0, 16 << 10, 256 << 10, 1 << 20, 2 << 20, 3 << 20):
        filler = fill(tiny_disk, leave=leave)
        code = ingest(["build", str(large), "--kb", KB, "--kb-root", str(root), "-q"])
        out, err = capsys.readouterr()
        if code == 0:  # enough room after all: the build is complete
            break
        assert code == 2
        failures.append(disk_full_line(err))
        assert leftovers(root) == [] and kb_state(root, embeddings=embeddings) == before
        filler.unlink()
    assert len(failures) >= 3, failures
    (tiny_disk / "filler").unlink(missing_ok=True)
    assert ingest(["build", str(large), "--kb", KB, "--kb-root", str(root), "-q"]) == 0
    docs = KnowledgeBase(root, KB).list_documents()
    assert sorted(Path(d.source).name for d in docs) == ["large.txt", "small.txt"]


@pytest.mark.parametrize(
    "step",
    ["copy-docstore", "sqlite-insert", "sqlite-commit", "bm25-save", "faiss-write", "manifest", "pointer"],
)
def test_a_failed_write_at_any_step_is_a_clear_error_and_changes_nothing(
    tmp_path: Path, sanguo_excerpts: dict[str, Path], tiny_embedding_path: Path, tiny_embeddings: Any,
    monkeypatch: pytest.MonkeyPatch, step: str,
) -> None:
    """Disk-full errors injected at each write of a build (no mount needed): the error names
    the problem and says the knowledge base is unchanged; readers see the old version."""
    import faiss

    from kb import bm25_index, docstore, faiss_store

    root = tmp_path / "root"
    kb = KnowledgeBase(root, KB, create=True, embedding_model=str(tiny_embedding_path), chunk_size=200, chunk_overlap=40)
    kb.set_embeddings(tiny_embeddings)
    kb.add_files([sanguo_excerpts["a"]])
    before = kb_state(root, embeddings=tiny_embeddings)

    def enospc(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def sqlite_full(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    if step == "copy-docstore":
        monkeypatch.setattr("kb.build.shutil.copyfile", enospc)
    elif step == "sqlite-insert":
        monkeypatch.setattr(docstore.Docstore, "add_document", sqlite_full)
    elif step == "sqlite-commit":
        monkeypatch.setattr(docstore.Docstore, "commit_and_close", sqlite_full)
    elif step == "bm25-save":
        monkeypatch.setattr(bm25_index.BM25Index, "save", enospc)
    elif step == "faiss-write":
        def write_index(*args: Any) -> None:  # what faiss raises on a short write
            raise RuntimeError("Error in faiss::FileIOWriter::operator() ... ret == (n) failed: write error")
        monkeypatch.setattr(faiss_store.faiss, "write_index", write_index)
    elif step == "manifest":
        real = Path.write_text
        monkeypatch.setattr(Path, "write_text", lambda self, *a, **k: enospc() if self.name == storage.MANIFEST
                            else real(self, *a, **k))
    else:
        real_open = Path.open
        monkeypatch.setattr(Path, "open", lambda self, *a, **k: enospc() if self.name.startswith(".tmp-CURRENT")
                            else real_open(self, *a, **k))
    with pytest.raises(KnowledgeBaseError) as info:
        kb.add_files([sanguo_excerpts["b"]])
    message = str(info.value)
    assert "\n" not in message and repr(KB) in message and "unchanged" in message, message
    assert ("No space left" in message or "disk is full" in message or "write error" in message), message
    monkeypatch.undo()
    assert faiss.write_index is not None
    assert leftovers(root) == [] and kb_state(root, embeddings=tiny_embeddings) == before
    kb.add_files([sanguo_excerpts["b"]])  # the same object builds fine afterwards
    assert len(kb.list_documents()) == 2


def test_quiet_dense_builds_print_nothing(tmp_path: Path, sanguo_excerpts: dict[str, Path], tiny_embedding_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """Regression: ``ingest build -q`` with an embedding model still printed transformers'
    "Loading weights" progress bar on stderr, so its errors were not one clean line."""
    from ingest.cli import main as ingest

    argv = ["build", str(sanguo_excerpts["a"]), "--kb", KB, "--kb-root", str(tmp_path), "-q"]
    assert ingest([*argv, "--embedding", str(tiny_embedding_path)]) == 0
    out, err = capsys.readouterr()
    assert err == "" and out.startswith(f"{KB}: files: 1 (1 added")


# ------------------------------------------------------------------------------ missing models and servers

UPSTREAM_KEY_ENV = "GLMKB_TEST_UPSTREAM_KEY"  # not a GLMKB_ settings variable (conftest clears those)


@pytest.fixture(scope="module")
def fault_root(tmp_path_factory: pytest.TempPathFactory, sanguo_path: Path, tiny_embedding_path: Path) -> Path:
    """A keyword-only KB ``sanguo`` and a dense KB ``orphan`` whose embedding model was deleted."""
    from configs import Settings

    root = tmp_path_factory.mktemp("fault_root")
    text = sanguo_path.read_text(encoding="utf-8")[:20_000]
    KnowledgeBase(root, "sanguo", create=True, embedding_model="none").add_texts({"sanguo.txt": text})
    gone = root.parent / "embedding-deleted-later"
    shutil.copytree(tiny_embedding_path, gone)
    orphan = KnowledgeBase.from_settings(Settings(kb_root=root, embedding={"model": str(gone), "device": "cpu"}),
                                         name="orphan", create=True)
    orphan.add_texts({"orphan.txt": text})
    orphan.close()
    shutil.rmtree(gone)
    return root


def broken_model_folder(folder: Path) -> Path:
    """A model folder whose config.json is not JSON (a half-copied checkpoint)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text('{"model_type": "glm", ', encoding="utf-8")
    return folder


def fault_settings(root: Path, **llm: Any) -> Any:
    from configs import Settings
    from tests.test_app import free_port

    return Settings(kb_root=root, kb_name="sanguo", embedding={"model": "none"}, retrieval={"mode": "hybrid", "top_k": 3},
                    llm={"max_input_tokens": 2048, **llm}, ui={"port": free_port()})


def api_on(service: Any, port: int) -> contextlib.AbstractContextManager[str]:
    """glmkb's API on a given loopback port (an upstream that comes back where it was)."""
    from tests.helpers import api_server

    return api_server(service, port=port)


def test_the_ui_keeps_serving_when_the_model_fails_to_load(fault_root: Path, tmp_path: Path) -> None:
    """A broken chat model and a deleted embedding model: the banner says why, questions are
    answered with the passages (keywords instead of vectors), management keeps working."""
    from app.services import Services
    from tests.test_app import answers, client, serve

    settings = fault_settings(fault_root, model_path=str(broken_model_folder(tmp_path / "broken-model")))
    state = Services.from_settings(settings)
    state.warm_up()  # what glmkb-web does in the background at start
    with serve(state) as url:
        c = client(url)
        banner = c.predict(api_name="/banner")["value"]
        assert "加载失败 / failed to load" in banner and "broken-model" in banner
        for kb, mode in (("sanguo", "hybrid"), ("orphan", "hybrid"), ("orphan", "dense")):
            answer = answers(c.predict("刘备和谁结义？", kb, mode, 3, api_name="/ask")[1])[-1]
            assert 'class="glmkb-src"' in answer and f"{kb}.txt" in answer
        assert "向量模型不可用" in c.predict(api_name="/banner")["value"]
        table = c.predict("orphan", api_name="/documents")[0]
        assert [row[0] for row in table["data"]] == ["orphan.txt"]
        assert "已创建" in c.predict("新库", api_name="/create_kb")[-1]
        assert "新库" in KnowledgeBase.list_names(fault_root)  # written at creation, without a model


def test_the_ui_survives_an_openai_server_that_is_down_and_recovers_when_it_returns(
    fault_root: Path, tiny_chatglm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """llm.backend openai with the server down: each question fails with one line naming the
    URL, the rest of the page keeps working, and once the server is up the same UI answers."""
    from gradio_client.exceptions import AppError

    from app.services import Services
    from tests.test_api import ANSWER, MODEL, make_settings, scripted
    from tests.test_app import answers, client, free_port, serve

    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "k")
    settings = fault_settings(fault_root, backend="openai", base_url=base_url, model=MODEL, api_key_env=UPSTREAM_KEY_ENV,
                              request_timeout=10)
    with serve(Services.from_settings(settings)) as url:
        c = client(url)
        for _ in range(2):
            with pytest.raises(AppError, match=f"cannot reach the model server at {base_url}"):
                c.predict("刘备和谁结义？", "sanguo", "bm25", 3, api_name="/ask")
            assert c.predict("sanguo", api_name="/documents")[0]["data"]
            assert c.predict(api_name="/banner") is not None
        upstream = Services(make_settings(fault_root), llm=scripted(tiny_chatglm), api_key="k")
        with api_on(upstream, port):
            chat = c.predict("刘备和谁结义？", "sanguo", "bm25", 3, api_name="/ask")[1]
        assert answers(chat)[-1] == ANSWER


def test_the_api_keeps_serving_without_its_models_and_recovers_its_upstream(
    fault_root: Path, tmp_path: Path, tiny_chatglm: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from app.services import Services
    from llm import load_llm
    from tests.test_api import ANSWER, MODEL, make_settings, running, scripted, user
    from tests.test_app import free_port

    def error(response: httpx.Response, status: int, *fragments: str) -> None:
        assert response.status_code == status, response.text
        message = response.json()["error"]["message"]
        assert "\n" not in message and all(f in message for f in fragments), message

    # a chat model that fails to load and an embedding model that is gone
    settings = fault_settings(fault_root, model_path=str(broken_model_folder(tmp_path / "broken-model")))
    with running(Services.from_settings(settings)) as base, httpx.Client(base_url=base, timeout=60) as c:
        for _ in range(2):
            error(c.post("/v1/chat/completions", json={"messages": user("你好")}), 503, "failed to load", "broken-model")
            error(c.post("/v1/kb/sanguo/chat/completions", json={"messages": user("你好")}), 503, "failed to load")
            error(c.post("/v1/kb/orphan/query", json={"query": "刘备", "mode": "dense"}), 503, "embedding-deleted-later")
            assert c.post("/v1/kb/orphan/query", json={"query": "刘备", "mode": "bm25"}).json()["data"]
            assert c.post("/v1/kb/sanguo/query", json={"query": "刘备"}).json()["data"]
            assert c.get("/health").json() == {"status": "ok"}
            # the fixture's two KBs (the UI test above may have created a third, empty one)
            assert {"orphan", "sanguo"} <= {kb["name"] for kb in c.get("/v1/kb").json()["data"]}

    # an upstream OpenAI-compatible server that is down, then back
    port = free_port()
    monkeypatch.setenv(UPSTREAM_KEY_ENV, "k")
    front_settings = fault_settings(fault_root, backend="openai", base_url=f"http://127.0.0.1:{port}/v1", model=MODEL,
                                    api_key_env=UPSTREAM_KEY_ENV, request_timeout=10)
    front = Services(front_settings, llm=load_llm(front_settings))
    with running(front) as base, httpx.Client(base_url=base, timeout=60) as c:
        error(c.post("/v1/chat/completions", json={"messages": user("你好")}), 502, f"127.0.0.1:{port}")
        error(c.post("/v1/kb/sanguo/chat/completions", json={"messages": user("刘备")}), 502, "cannot reach")
        assert c.post("/v1/kb/sanguo/query", json={"query": "刘备"}).json()["data"]
        upstream = Services(make_settings(fault_root), llm=scripted(tiny_chatglm), api_key="k")
        with api_on(upstream, port):
            reply = c.post("/v1/chat/completions", json={"messages": user("你好")}).json()
            assert reply["choices"][0]["message"]["content"] == ANSWER
        error(c.post("/v1/chat/completions", json={"messages": user("你好")}), 502, "cannot reach")
