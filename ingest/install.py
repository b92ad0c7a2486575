"""Install glmkb with the right torch build: ``python ingest/install.py [EXTRA ...] [--dry-run]``.

PyPI's Linux torch is the CUDA build: on a machine without an NVIDIA GPU, a plain
``pip install -e .`` pulls torch+cu13x and the nvidia-* packages (a 6.3 GB venv, measured).
This script runs that same ``pip install -e .[EXTRAS]`` but, on Linux without a GPU, first asks
pip for PyPI's twin built for CPU (``+cpu``, ~190 MB wheel): from PyTorch's CPU index when it is
reachable, or from whatever pip is already configured with (a local wheel folder or mirror),
and pins the newest one. It prints the pip command before running it.

It runs as a plain script before glmkb's dependencies exist, so it uses the standard library only
and never imports the ``ingest`` package.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
REPO = Path(__file__).resolve().parents[1]


def has_nvidia_gpu() -> bool:
    """True when the NVIDIA driver sees a GPU (``nvidia-smi -L`` or /proc/driver/nvidia/gpus)."""
    gpus = Path("/proc/driver/nvidia/gpus")
    if gpus.is_dir() and any(gpus.iterdir()):
        return True
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    result = subprocess.run([smi, "-L"], capture_output=True, text=True, check=False)
    return result.returncode == 0 and "GPU" in result.stdout


def cpu_index_reachable(timeout: float = 10.0) -> bool:
    """True when PyTorch's CPU wheel index answers (it is not reachable from every network)."""
    try:
        with urllib.request.urlopen(f"{CPU_INDEX}/torch/", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def version_key(version: str) -> tuple[int, ...]:
    """Sort key of a release such as ``2.13.0+cpu`` (its numeric part)."""
    return tuple(int(part) for part in re.findall(r"\d+", version.split("+")[0]))


def newest_cpu_torch(index_args: list[str]) -> str | None:
    """The newest ``torch`` version with a ``+cpu`` label that pip can see, or None."""
    command = [sys.executable, "-m", "pip", "index", "versions", "torch", *index_args]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    match = re.search(r"Available versions:(.*)", result.stdout)
    versions = [v.strip() for v in match.group(1).split(",")] if match else []
    cpu = [v for v in versions if v.endswith("+cpu")]
    return max(cpu, key=version_key) if cpu else None


def pip_command(extras: list[str], *, cpu: bool) -> list[str]:
    """The ``pip install -e .[extras]`` command, with a CPU-only torch pinned when ``cpu``."""
    target = f"{REPO}[{','.join(extras)}]" if extras else str(REPO)
    command = [sys.executable, "-m", "pip", "install", "-e", target]
    if not cpu or not sys.platform.startswith("linux"):
        return command  # PyPI's macOS and Windows wheels are CPU builds already
    index_args = ["--extra-index-url", CPU_INDEX] if cpu_index_reachable() else []
    version = newest_cpu_torch(index_args)
    if version is None:
        print(
            "warning: no CPU-only torch build found (PyTorch's CPU index is unreachable and pip is "
            "configured with none); pip will install PyPI's torch with its CUDA libraries (several GB)",
            file=sys.stderr,
        )
        return command
    return [*command, f"torch=={version}", *index_args]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python ingest/install.py", description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", help="optional extras to install too, e.g. dev, gpu, milvus")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--cpu", action="store_true", help="install the CPU-only torch even if a GPU is present")
    device.add_argument("--gpu", action="store_true", help="install PyPI's CUDA torch even without a GPU")
    parser.add_argument("--dry-run", action="store_true", help="print the pip command, run nothing")
    args = parser.parse_args(argv)
    cpu = args.cpu or (not args.gpu and not has_nvidia_gpu())
    command = pip_command(args.extras, cpu=cpu)
    print("$ " + " ".join(command), file=sys.stderr, flush=True)
    if args.dry_run:
        return 0
    return subprocess.run(command, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
