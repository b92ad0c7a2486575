"""A long-running server's resources over many builds: RSS, open files and disk per N builds.

    python -m bench.longrun --builds 200 --out DIR                 # 三国演义 from ../shared/corpus
    python -m bench.longrun --builds 200 --embedding DIR --out DIR # with vectors (a local model folder)

Drives ``app.services.Services`` — the one object behind the web UI and the API — in one
process, as ``glmkb serve`` would: each build adds (or replaces) a file of a few chapters of a
real novel, every third one also removes a document, every ``--drop-every`` builds the knowledge
base is dropped and created again (half-way between samples), and between builds it is queried (BM25 search, the
LangChain retriever, listing, summary, a document's text and chapters). Every ``--sample-every``
builds it records, after ``gc.collect()``:

- RSS (``/proc/self/status`` VmRSS) and the process's open file descriptors;
- files under ``kb_root`` still held open that were deleted or belong to a version other than
  the live one (glmkb #20.10: servers held 16-29 deleted docstores after 40 builds);
- disk used under ``kb_root`` and the version folders kept (the live one and the previous);
- ``LoadedVersion`` objects still alive (a leak of versions shows here before it shows in RSS).

Writes ``longrun.json`` and ``longrun.md`` (a table per sample) to ``--out``.
``tests/test_reliability_longrun.py`` runs the same loop at small scale and asserts on it.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

QUERIES = ("刘备", "关羽张飞", "曹操", "诸葛亮", "孙权", "赵云")


@dataclass(frozen=True)
class Sample:
    """What the process holds after ``build`` builds."""

    build: int
    seconds: float
    rss_mib: float
    open_fds: int
    held_under_root: int
    stale_held: list[str]
    disk_mib: float
    versions: int
    leftovers: list[str]
    live_versions: int
    chunks: int


@dataclass
class Plan:
    """The workload: source texts to cycle through, how often to remove, drop and sample."""

    texts: Sequence[str]
    builds: int
    files: int = 6
    remove_every: int = 3
    drop_every: int = 50
    sample_every: int = 10
    queries: Sequence[str] = QUERIES
    name: str = "longrun"
    samples: list[Sample] = field(default_factory=list)


def rss_mib() -> float:
    """This process's resident set size in MiB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def open_files() -> list[str]:
    """Targets of this process's open file descriptors (deleted files end in " (deleted)")."""
    targets = []
    for fd in Path("/proc/self/fd").iterdir():
        try:
            targets.append(os.readlink(fd))
        except OSError:  # closed meanwhile (the listing's own descriptor)
            continue
    return targets


def stale_files(root: Path, targets: Sequence[str]) -> list[str]:
    """Open files under ``root`` that were deleted or lie in a version that is not live."""
    stale = []
    for target in targets:
        if not target.startswith(f"{root}/"):
            continue
        rel = Path(target.removesuffix(" (deleted)")).relative_to(root).parts
        if target.endswith(" (deleted)") or len(rel) < 2 or rel[1] != live_version(root / rel[0]):
            stale.append(target)
    return stale


def live_version(kb_dir: Path) -> str | None:
    try:
        return (kb_dir / "CURRENT").read_text(encoding="utf-8").strip()
    except OSError:
        return None


def disk_bytes(root: Path) -> int:
    """Bytes of every file under ``root`` (what ``du --apparent-size`` counts)."""
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def kb_layout(root: Path) -> tuple[int, list[str]]:
    """The most version folders any knowledge base keeps, and staging or trash leftovers."""
    most, leftovers = 0, []
    for entry in root.iterdir():
        if entry.name.startswith(".trash-"):
            leftovers.append(entry.name)
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        kept = [p.name for p in entry.iterdir() if p.name.startswith("v-")]
        leftovers += [f"{entry.name}/{p.name}" for p in entry.iterdir() if p.name.startswith(".tmp-")]
        most = max(most, len(kept))
    return most, leftovers


def live_version_objects(root: Path) -> int:
    """Open ``LoadedVersion`` objects of knowledge bases under ``root`` (others in the process,
    such as other tests', are not counted)."""
    from kb.version import LoadedVersion

    return sum(1 for o in gc.get_objects()
               if type(o) is LoadedVersion and not o.closed and o.path.is_relative_to(root))


def sample(root: Path, build: int, started: float, *, chunks: int) -> Sample:
    """One sample; open files are read before ``gc.collect()`` (a server never forces one: files
    "left to garbage collection" are what #20.10 found held), RSS and live objects after it."""
    targets = open_files()
    gc.collect()
    versions, leftovers = kb_layout(root)
    return Sample(
        build=build, seconds=round(time.perf_counter() - started, 2), rss_mib=round(rss_mib(), 1),
        open_fds=len(targets), held_under_root=sum(t.startswith(f"{root}/") for t in targets),
        stale_held=stale_files(root, targets), disk_mib=round(disk_bytes(root) / 2**20, 2),
        versions=versions, leftovers=leftovers, live_versions=live_version_objects(root), chunks=chunks,
    )


def query(services: Any, name: str, text: str) -> int:
    """What the UI and the API do between builds: search, retrieve, list, summarize, read."""
    kb = services.kb(name)
    hits = kb.search(text, mode="bm25", k=3)
    hits += kb.as_retriever(mode="bm25", k=3).invoke(text)
    docs = services.list_documents(name)
    services.kb_summary(name)
    if docs:
        kb.get_document_text(docs[0].doc_id)
        kb.get_chapters(docs[0].doc_id)
    return len(hits)


def run(services: Any, plan: Plan, *, workdir: Path, on_sample: Callable[[Sample], None] | None = None) -> list[Sample]:
    """Build, remove, drop and query ``plan.builds`` times through ``services``; samples as it goes."""
    root = Path(services.settings.kb_root)
    workdir.mkdir(parents=True, exist_ok=True)
    services.create_kb(plan.name)
    started = time.perf_counter()
    plan.samples.append(sample(root, 0, started, chunks=0))
    for i in range(1, plan.builds + 1):
        path = workdir / f"part{i % plan.files}.txt"
        # A marker line makes every build a real change, whatever the counts of texts and files.
        path.write_text(f"{plan.texts[i % len(plan.texts)]}\n（第 {i} 次构建）\n", encoding="utf-8")
        services.add_files(plan.name, [path])
        query(services, plan.name, plan.queries[i % len(plan.queries)])
        if i % plan.remove_every == 0:
            docs = services.list_documents(plan.name)
            if len(docs) > 1:
                services.remove_document(plan.name, docs[0].doc_id)
        if plan.drop_every and i % plan.drop_every == plan.drop_every // 2:  # not on a sample
            services.drop_kb(plan.name)
            services.create_kb(plan.name)
        query(services, plan.name, plan.queries[(i + 1) % len(plan.queries)])
        if i % plan.sample_every == 0:
            chunks = int(services.kb_summary(plan.name).get("chunks") or 0)
            plan.samples.append(sample(root, i, started, chunks=chunks))
            if on_sample:
                on_sample(plan.samples[-1])
    return plan.samples


def slope(samples: Sequence[Sample], attr: str) -> float:
    """Least-squares growth of ``attr`` per build over ``samples``."""
    xs = [s.build for s in samples]
    ys = [getattr(s, attr) for s in samples]
    if len(xs) < 2:
        return 0.0
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def second_half(samples: Sequence[Sample]) -> list[Sample]:
    last = samples[-1].build
    return [s for s in samples if s.build >= last / 2]


def summary(samples: Sequence[Sample]) -> dict[str, Any]:
    """The numbers to judge a run by: growth over the second half, and the worst of each sample."""
    half = second_half(samples)
    builds = half[-1].build - half[0].build
    return {
        "builds": samples[-1].build,
        "seconds": samples[-1].seconds,
        "rss_start_mib": samples[0].rss_mib,
        "rss_end_mib": samples[-1].rss_mib,
        "rss_max_mib": max(s.rss_mib for s in samples),
        "rss_slope_second_half_mib_per_100_builds": round(slope(half, "rss_mib") * 100, 2),
        "rss_growth_second_half_mib": round(slope(half, "rss_mib") * builds, 2),
        "open_fds_max": max(s.open_fds for s in samples),
        "open_fds_end": samples[-1].open_fds,
        "stale_held_max": max(len(s.stale_held) for s in samples),
        "disk_max_mib": max(s.disk_mib for s in samples),
        "disk_end_mib": samples[-1].disk_mib,
        "versions_max": max(s.versions for s in samples),
        "leftovers_max": max(len(s.leftovers) for s in samples),
        "live_versions_max": max(s.live_versions for s in samples),
    }


def novel_parts(path: Path, *, chapters: int) -> list[str]:
    """The novel cut into files of ``chapters`` consecutive chapters each."""
    from kb.loading import load_text
    from kb.splitting import split_chapters

    text = load_text(path)
    sections = [c for c in split_chapters(text) if c.number is not None]
    return [text[sections[i].start : sections[min(i + chapters, len(sections)) - 1].end]
            for i in range(0, len(sections), chapters)]


def markdown(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [
        f"# bench.longrun: {s['builds']} builds of {result['source']} ({result['embedding']})",
        "",
        f"{s['seconds']:.0f} s; RSS {s['rss_start_mib']:.0f} -> {s['rss_end_mib']:.0f} MiB "
        f"(max {s['rss_max_mib']:.0f}; second half {s['rss_slope_second_half_mib_per_100_builds']:+.2f} MiB per 100 "
        f"builds); open fds max {s['open_fds_max']}; deleted or old-version files held max {s['stale_held_max']}; "
        f"disk max {s['disk_max_mib']:.1f} MiB, versions kept max {s['versions_max']}",
        "",
        "| builds | s | chunks | RSS MiB | open fds | held under kb_root | stale held | disk MiB | versions | live LoadedVersion |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["samples"]:
        lines.append(
            f"| {row['build']} | {row['seconds']} | {row['chunks']} | {row['rss_mib']} | {row['open_fds']} | {row['held_under_root']} "
            f"| {len(row['stale_held'])} | {row['disk_mib']} | {row['versions']} | {row['live_versions']} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--builds", type=int, default=200)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_out")))
    p.add_argument("--novel", default="sanguo.txt",
                   help="a text file, or a novel's name in ../shared/corpus (GLMKB_TEST_CORPUS: another folder)")
    p.add_argument("--chapters", type=int, default=4, help="chapters per built file")
    p.add_argument("--embedding", default="none", help="a local embedding model folder, or none")
    p.add_argument("--sample-every", type=int, default=10)
    p.add_argument("--drop-every", type=int, default=50)
    args = p.parse_args(argv)
    from tests.fixtures.corpus import corpus_file

    from app.services import Services
    from configs import load_settings

    os.environ.pop("GLMKB_TEST_CORPUS", None)  # read by tests.fixtures.corpus; not a glmkb setting
    source = Path(args.novel) if Path(args.novel).is_file() else corpus_file(args.novel)
    work = args.out / "longrun-work"
    shutil.rmtree(work, ignore_errors=True)
    settings = load_settings(None, kb_root=str(work / "kb"), embedding={"model": args.embedding},
                             retrieval={"mode": "bm25"})
    plan = Plan(texts=novel_parts(source, chapters=args.chapters), builds=args.builds,
                sample_every=args.sample_every, drop_every=args.drop_every)
    services = Services(settings)
    with open(os.devnull, "w") as quiet, contextlib.redirect_stderr(quiet):  # the builds' tqdm bars
        samples = run(services, plan, workdir=work / "src",
                      on_sample=lambda s: print(f"build {s.build}: {s.seconds} s, RSS {s.rss_mib} MiB, "
                                                f"fds {s.open_fds}, stale {len(s.stale_held)}, disk {s.disk_mib} MiB",
                                                flush=True))
    result = {"source": str(source.name), "embedding": args.embedding, "chapters_per_file": args.chapters,
              "summary": summary(samples), "samples": [asdict(s) for s in samples]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "longrun.json").write_text(json.dumps(result, indent=2, ensure_ascii=False), encoding="utf-8")
    (args.out / "longrun.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
