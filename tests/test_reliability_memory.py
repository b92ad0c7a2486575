"""Memory: ``ingest build``'s peak must not grow with the file beyond its BM25 index.

Regression guard for issue 9 (docs/RELIABILITY.md): ``ingest build`` of a 100 MB UTF-8 Chinese
file with ``--embedding none`` peaked at 11.3 GiB RSS (every chunk's BM25 tokens as Python
strings), then 2.4 GiB (file read whole, all chunks and tokens held, bm25s's index-sized
intermediates): 115, then ~21 MiB more per MB of text. Streamed (file read in blocks, chunks
written a batch at a time, BM25 built in two passes over the docstore) it peaks at about 0.6 GiB
for 100 MB, of which ~0.3 GiB is start-up: ~2.5 MiB per MB, the index itself.

The slope is measured here between two small files, each built by the real command in a child
process; the 100 MB point itself (~8 minutes on a 2-core machine, most of a CI run's slowest
test before) is ``python -m bench.ingest_memory``'s.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ingest_memory import measure_build, write_repeated
from tests.helpers import clean_env

SIZES_MB = (4, 16)
SLOPE_MIB_PER_MB = 6  # the streamed build's index: ~2.5; the old builds: 21 and 115
BOUND_MIB = 1024  # start-up (~0.35 GiB) plus the index and its save, with room to spare


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc for the child's peak RSS")
def test_ingest_build_memory_grows_only_by_the_index_as_the_file_grows(sanguo_path: Path, tmp_path: Path) -> None:
    unit = sanguo_path.read_bytes()
    builds = []
    for mb in SIZES_MB:
        text_file = write_repeated(unit, megabytes=mb, path=tmp_path / f"{mb}mb.txt")
        build = measure_build(text_file, kb_root=tmp_path / f"kb{mb}", env=clean_env(), timeout=600)
        assert build.returncode == 0, build.stderr_tail
        builds.append(build)
    small, big = builds
    slope = (big.peak_mib - small.peak_mib) / (big.megabytes - small.megabytes)
    assert slope <= SLOPE_MIB_PER_MB, f"peak RSS {small.peak_mib:.0f} -> {big.peak_mib:.0f} MiB: {slope:.1f} MiB per MB"
    assert big.peak_mib <= BOUND_MIB, f"peak RSS {big.peak_mib:.0f} MiB for {big.megabytes:.0f} MB"
