"""The machine a bundle is for: Python version, wheel platform tag and torch build.

pip's ``--platform manylinux_2_28_x86_64`` accepts only wheels tagged exactly that, yet most
projects publish ``manylinux_2_17``/``manylinux2014`` wheels that run on any glibc >= 2.17, so
the target's platform is expanded to every older compatible manylinux tag here.
"""

from __future__ import annotations

import platform as _platform
import re
import sys
from dataclasses import dataclass

from app.bundle.errors import BundleError

TORCH_INDEX = "https://download.pytorch.org/whl/{flavour}"
_MANYLINUX = re.compile(r"^manylinux_(\d+)_(\d+)_(\w+)$")
# Tags whose arch follows two version numbers: musllinux_1_2_x86_64, macosx_11_0_arm64.
_VERSIONED = re.compile(r"^(?:manylinux|musllinux|macosx)_\d+_\d+_(\w+)$")
_LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}


@dataclass(frozen=True)
class Target:
    """What the wheels must run on. ``None`` fields mean "this machine" (pip's own tags)."""

    python: str | None = None  # "3.11"
    platform: str | None = None  # "manylinux_2_28_x86_64"
    torch: str | None = None  # "cpu", "cu121", "cu124"; None: PyPI's default build

    @property
    def python_version(self) -> str:
        return self.python or f"{sys.version_info.major}.{sys.version_info.minor}"

    @property
    def arch(self) -> str:
        """CPU architecture the wheels are for (``x86_64``, ``aarch64``)."""
        if self.platform is None:
            return _platform.machine()
        match = _VERSIONED.match(self.platform)
        if match:
            return match.group(1)
        return self.platform.split("_", 1)[1] if "_" in self.platform else self.platform

    def pip_args(self) -> list[str]:
        """``pip download`` flags selecting wheels for this target (only wheels; pip's own tags for this machine)."""
        args: list[str] = []
        if self.python is not None:
            args += ["--python-version", self.python, "--implementation", "cp"]
        if self.platform is not None:
            for tag in compatible_platforms(self.platform):
                args += ["--platform", tag]
        # Always wheels: an sdist would need a compiler and build tools on the offline machine
        # (sdist-only pure-Python packages such as jieba are built into wheels here instead).
        return [*args, "--only-binary", ":all:"]

    def torch_index(self) -> str | None:
        return TORCH_INDEX.format(flavour=self.torch) if self.torch else None


def make_target(*, python: str | None, platform: str | None, torch: str | None) -> Target:
    """A checked Target from the command-line values."""
    if python is not None and not re.fullmatch(r"3\.\d{1,2}", python):
        raise BundleError(f"--python {python!r} is not a Python version like 3.11")
    if platform is not None and not re.fullmatch(r"[a-z0-9_]+", platform):
        raise BundleError(f"--platform {platform!r} is not a wheel platform tag like manylinux_2_28_x86_64")
    if torch == "default":  # PyPI's own torch build (CUDA on Linux x86_64)
        torch = None
    if torch is not None and not re.fullmatch(r"cpu|cu\d{3}|rocm[\d.]+", torch):
        raise BundleError(f"--torch {torch!r} is not a PyTorch build such as cpu, cu121 or cu124")
    return Target(python=python, platform=platform, torch=torch)


def local_torch_flavour() -> str | None:
    """The build of this machine's torch (``cpu``, ``cu121``...), None for a plain PyPI build."""
    try:
        from importlib.metadata import version

        local = version("torch").partition("+")[2]
    except Exception:
        return None
    return local or None


def compatible_platforms(tag: str) -> list[str]:
    """``tag`` and every older manylinux tag a machine of that glibc also runs."""
    match = _MANYLINUX.match(tag)
    if not match:
        return [tag]
    major, minor, arch = int(match.group(1)), int(match.group(2)), match.group(3)
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    tags += [f"{legacy}_{arch}" for legacy, glibc in _LEGACY.items() if glibc <= (major, minor)]
    return tags


def wheel_glibc(platform_tag: str) -> tuple[int, int] | None:
    """Minimum glibc a wheel platform tag needs (None for pure or non-Linux wheels)."""
    match = _MANYLINUX.match(platform_tag)
    if match:
        return int(match.group(1)), int(match.group(2))
    for legacy, glibc in _LEGACY.items():
        if platform_tag.startswith(legacy + "_"):
            return glibc
    if platform_tag.startswith("linux_"):
        libc = _platform.libc_ver()[1]
        return tuple(int(p) for p in libc.split(".")[:2]) if libc else None  # type: ignore[return-value]
    return None
