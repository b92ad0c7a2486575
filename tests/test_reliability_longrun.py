"""A long-running server over many builds: no deleted versions held open, RSS and disk flat.

glmkb #20 (the bar, "Servers"): long-running servers hold no deleted versions open and keep RSS
and disk flat over 200 builds — here at small scale through ``app.services.Services`` (the layer
the web UI and the API share), with ``bench.longrun``'s loop; ``python -m bench.longrun`` runs
the same loop on a whole novel (docs/RELIABILITY.md has its numbers).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.longrun import Plan, novel_parts, run, second_half, slope
from tests.fixtures.corpus import EXCERPT_DIR

BUILDS = 200
# RSS growth allowed over the second half (100 builds), from the least-squares slope of its
# samples. Measured: 0.1-1.5 MiB (allocator noise). A leak of one version per build shows far
# above it: each holds its SQLite connection and page cache (~0.1-2 MiB) and its BM25 arrays.
RSS_GROWTH_MIB = 8.0


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")
def test_a_long_running_server_holds_no_old_versions_and_stays_flat(tmp_path: Path) -> None:
    """Regression (#20.10): servers held deleted versions' SQLite files open ("left to garbage
    collection"): 16-29 deleted docstores (149-275 MiB) after 40 builds of a 30 MiB KB. Over 200
    builds, removals, drops and queries through one ``Services``, at every 10th build: nothing
    under kb_root is held open but the live version's files, at most the live and the previous
    version are on disk with no staging or trash left, and RSS, open files and disk stay flat."""
    from app.services import Services
    from configs import load_settings

    settings = load_settings(None, kb_root=str(tmp_path / "kb"), embedding={"model": "none"},
                             chunking={"chunk_size": 200, "chunk_overlap": 40}, retrieval={"mode": "bm25"})
    texts = novel_parts(EXCERPT_DIR / "sanguo.txt", chapters=1)
    plan = Plan(texts=texts, builds=BUILDS, files=4, drop_every=50, sample_every=10)
    samples = run(Services(settings), plan, workdir=tmp_path / "src")

    assert len(samples) == BUILDS // 10 + 1
    for s in samples:
        assert s.stale_held == [], f"after {s.build} builds, deleted or old versions held open: {s.stale_held}"
        assert s.held_under_root <= 2, f"after {s.build} builds: {s.held_under_root} files under kb_root open"
        assert s.versions <= 2 and s.leftovers == [], f"after {s.build} builds: {s.versions} versions, {s.leftovers}"
        assert s.live_versions <= 1, f"after {s.build} builds: {s.live_versions} versions loaded"
    first, half = samples[: len(samples) // 2], second_half(samples)
    growth = slope(half, "rss_mib") * (half[-1].build - half[0].build)
    rss = [s.rss_mib for s in samples]
    assert growth < RSS_GROWTH_MIB, f"RSS grew {growth:.1f} MiB over builds {half[0].build}-{half[-1].build}: {rss}"
    assert max(s.open_fds for s in half) <= min(s.open_fds for s in samples) + 2, [s.open_fds for s in samples]
    assert max(s.disk_mib for s in half) <= 1.5 * max(s.disk_mib for s in first), [s.disk_mib for s in samples]
