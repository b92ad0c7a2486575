"""Peak memory of ``ingest build`` against the size of the file: a real child process per size.

    python -m bench.ingest_memory --sizes 25 50 100 --out DIR     # 三国演义 repeated to N MB

For each size, 三国演义 (``../shared/corpus`` or ``GLMKB_TEST_CORPUS``, chapter headings included) is written out again
and again to about N MB of UTF-8, and ``ingest build --embedding none`` runs on it in a child
process whose own peak RSS (``VmHWM``) is the result, with its wall time. A build that keeps a
file's chunks or BM25 tokens whole grows by tens of MiB per MB of text (docs/RELIABILITY.md,
"Memory of large builds": 11.3 GiB, then 2.4 GiB at 100 MB); the streamed build adds only its
BM25 index (~2.5 MiB per MB). ``tests/test_reliability_memory.py`` checks the same slope at a few
MB; the 100 MB point, ~8 minutes on a 2-core machine, is measured here. Writes
``ingest_memory.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.fixtures.corpus import CORPUS_DIR  # GLMKB_TEST_CORPUS, else ../shared/corpus

REPO = Path(__file__).resolve().parents[1]

# ``ingest build`` in the child, then its own peak RSS (bench.rss) on the last line.
CHILD = textwrap.dedent(
    """
    import sys
    from bench.rss import peak_rss_mib
    from ingest.cli import main
    code = main(sys.argv[1:])
    print("peak_mib", peak_rss_mib(), flush=True)
    sys.exit(code)
    """
)


@dataclass(frozen=True)
class BuildMemory:
    """One ``ingest build`` of a file of ``megabytes`` MB."""

    megabytes: float
    peak_mib: float
    seconds: float
    returncode: int
    stderr_tail: str


def write_repeated(unit: bytes, *, megabytes: float, path: Path) -> Path:
    """``unit`` written out whole, again and again, to at least ``megabytes`` MB (2**20 bytes)."""
    with path.open("wb") as f:
        for _ in range(int(megabytes * 2**20) // len(unit) + 1):
            f.write(unit)
    return path


def measure_build(text_file: Path, *, kb_root: Path, env: dict[str, str] | None = None,
                  timeout: float = 3600) -> BuildMemory:
    """``ingest build`` of ``text_file`` (keyword-only) in a child process: its peak RSS and time."""
    command = [sys.executable, "-c", CHILD, "build", str(text_file), "--kb", "big", "--kb-root", str(kb_root),
               "--embedding", "none", "-q"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    seconds = time.monotonic() - started
    peak = done.stdout.split("peak_mib")[-1].split()[0] if "peak_mib" in done.stdout else "nan"
    return BuildMemory(megabytes=text_file.stat().st_size / 2**20, peak_mib=float(peak),
                       seconds=seconds, returncode=done.returncode, stderr_tail=done.stderr[-2000:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=float, nargs="+", default=[25, 50, 100], help="file sizes in MB")
    p.add_argument("--corpus", type=Path, default=CORPUS_DIR / "sanguo.txt")
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "bench_out")))
    args = p.parse_args(argv)
    unit = args.corpus.read_bytes()
    rows = []
    for mb in args.sizes:
        with tempfile.TemporaryDirectory() as tmp:
            text_file = write_repeated(unit, megabytes=mb, path=Path(tmp) / "big.txt")
            row = measure_build(text_file, kb_root=Path(tmp) / "kb")
        rows.append(row)
        print(f"{row.megabytes:7.1f} MB  peak {row.peak_mib:7.1f} MiB  {row.seconds:6.1f} s  rc {row.returncode}",
              flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ingest_memory.json").write_text(
        json.dumps({"cpu_count": os.cpu_count(), "builds": [asdict(r) for r in rows]}, indent=2), encoding="utf-8")
    return 0 if all(r.returncode == 0 for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
