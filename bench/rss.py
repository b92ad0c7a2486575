"""A process's own peak resident set, for benchmarks that run each measured step in a child.

VmHWM, not ``resource.getrusage().ru_maxrss``: Linux carries the parent's high-water mark into a
child's ``ru_maxrss`` across fork and exec, so under a big pytest process it read 1.3 GiB for a
build that peaked at 0.6 GiB. Imports nothing heavy, so a child's start-up stays its own.
"""

from __future__ import annotations

from pathlib import Path


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM), MiB; NaN where there is no /proc."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")
