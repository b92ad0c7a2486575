"""Memory: ingesting a 100 MB text file must not need memory proportional to many times its size.

Regression guard for issue 9 (docs/RELIABILITY.md): ``ingest build`` of a 100 MB UTF-8 Chinese
file with ``--embedding none`` peaked at 11.3 GiB RSS (every chunk's BM25 tokens as Python
strings), then 2.4 GiB (file read whole, all chunks and tokens held, bm25s's index-sized
intermediates). Streamed (file read in blocks, chunks written a batch at a time, BM25 built in
two passes over the docstore) it peaks at about 0.6 GiB, of which ~0.3 GiB is start-up. The
test runs the real command in a child process under a watchdog that kills it as soon as its
RSS passes the bound.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.helpers import clean_env

REPO = Path(__file__).resolve().parents[1]
FILE_MB = 100
BOUND_MIB = 1024  # start-up (~0.35 GiB) plus the BM25 index (~0.25 GiB) and its save, with room to spare

# ``ingest build`` in this process, then its own peak RSS on the last line. VmHWM, not
# ru_maxrss: Linux carries the parent's high-water mark into ru_maxrss across fork and exec,
# so under a big pytest process ru_maxrss reported 1.3 GiB for a build that peaked at 0.6 GiB.
CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from ingest.cli import main
    code = main(sys.argv[1:])
    hwm = [line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM:")]
    print("peak_kib", hwm[0].split()[1], flush=True)
    sys.exit(code)
    """
)


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


@pytest.fixture
def big_file(tmp_path: Path, sanguo_path: Path) -> Path:
    """About 100 MB of real Chinese text (三国演义 repeated), UTF-8, with its chapter headings."""
    unit = sanguo_path.read_bytes()
    path = tmp_path / "big.txt"
    with path.open("wb") as f:
        for _ in range(FILE_MB * 2**20 // len(unit) + 1):
            f.write(unit)
    return path


@pytest.mark.slow
@pytest.mark.timeout(1800)
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc to watch the child's memory")
def test_a_100_mb_file_is_ingested_with_bounded_memory(big_file: Path, tmp_path: Path) -> None:
    env = clean_env()
    command = [sys.executable, "-c", CHILD, "build", str(big_file), "--kb", "big", "--kb-root",
               str(tmp_path / "kb"), "--embedding", "none", "-q"]
    started = time.monotonic()
    child = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while child.poll() is None:
        peak = max(peak, rss_mib(child.pid))
        if peak > BOUND_MIB:
            child.kill()
            child.wait()
            break
        time.sleep(0.05)
    out, err = child.communicate()
    elapsed = time.monotonic() - started
    assert peak <= BOUND_MIB, f"ingest build of {FILE_MB} MB passed {BOUND_MIB} MiB RSS after {elapsed:.0f} s (killed)"
    assert child.returncode == 0, err[-2000:]
    peak_hwm = int(out.split("peak_kib")[-1].split()[0]) / 1024
    assert peak_hwm <= BOUND_MIB, f"peak RSS {peak_hwm:.0f} MiB for a {FILE_MB} MB file"
