"""Step 1 of a bundle: every wheel glmkb needs on the target, fetched with ``pip download``.

pip resolves the dependency set (it knows markers, extras and tags); this module only drives
it: glmkb's own wheel is built from this source tree, torch comes from the index of the
requested build (cpu, cu121, ...) and is then pinned, and a dependency published only as an
sdist (jieba) is built into a pure-Python wheel here so the offline side never compiles.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from app.bundle.errors import BundleError, DownloadError
from app.bundle.target import Target

log = logging.getLogger(__name__)

PROJECT = "glmkb"
_NO_MATCH = re.compile(r"No matching distribution found for (\S+)")
# What ``pip download`` prints per file it resolved, and its last line (checked against pip 26.3).
_REPORTED = re.compile(r"^\s*(?:Saved|File was already downloaded) (.+\.whl)\s*$", re.M)
_RESOLVED = re.compile(r"^Successfully downloaded (.+)$", re.M)
# Rounds of "build the sdist-only dependency pip reported, then resolve again"; glmkb's tree
# has one such package (jieba), so more than a handful means something else is wrong.
MAX_SDIST_ROUNDS = 10


@dataclass(frozen=True)
class WheelInfo:
    """What the bundle's README and install.sh need to know about one wheel."""

    file: str
    name: str
    version: str
    licence: str
    platform_tags: tuple[str, ...]


def pip_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "pip", *args, "--disable-pip-version-check"]


def source_flags(*, find_links: Sequence[Path], no_index: bool, index_url: str | None = None) -> list[str]:
    """pip flags naming where packages come from (local folders first, then the index)."""
    flags: list[str] = []
    for folder in find_links:
        flags += ["--find-links", str(folder)]
    if no_index:
        flags.append("--no-index")
    elif index_url:
        flags += ["--index-url", index_url]
    return flags


def run_pip(args: list[str], *, what: str) -> subprocess.CompletedProcess[str]:
    """Run pip; its output is kept for the error message and logged at INFO."""
    log.info("pip (%s): %s", what, " ".join(args[3:]))
    proc = subprocess.run(args, capture_output=True, text=True)
    log.info("%s", proc.stdout[-4000:])
    if proc.returncode != 0:
        log.info("%s", proc.stderr[-4000:])
    return proc


def find_source_root() -> Path | None:
    """This glmkb's source tree (the folder with pyproject.toml), None when installed from a wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "app").is_dir() else None


def build_project_wheel(dest: Path, *, source_root: Path) -> Path:
    """glmkb's own wheel, built from a clean copy of the source packages (no build/ or
    egg-info left in the checkout)."""
    with tempfile.TemporaryDirectory(prefix="glmkb-wheel-") as tmp:
        work = Path(tmp) / "src"
        work.mkdir()
        for name in ("pyproject.toml", "README.md", "LICENSE"):
            if (source_root / name).is_file():
                shutil.copy2(source_root / name, work / name)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
        for package in source_packages(source_root):
            shutil.copytree(source_root / package, work / package, ignore=ignore)
        # This venv's setuptools when it has one: no index needed to build glmkb itself.
        no_isolation = ["--no-build-isolation"] if _has_setuptools() else []
        proc = run_pip(
            pip_command("wheel", "--no-deps", *no_isolation, "-w", str(dest), str(work)),
            what="glmkb wheel",
        )
        if proc.returncode != 0:
            raise BundleError(f"could not build glmkb's wheel from {source_root}: {_last_error(proc)}")
    wheels = sorted(dest.glob(f"{PROJECT}-*.whl"), key=lambda p: p.stat().st_mtime)
    return wheels[-1]


def source_packages(source_root: Path) -> list[str]:
    """Top-level package folders pyproject.toml ships (``app.bundle`` -> ``app``)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        packages = None
    else:
        config = tomllib.loads((source_root / "pyproject.toml").read_text(encoding="utf-8"))
        packages = config.get("tool", {}).get("setuptools", {}).get("packages")
    if isinstance(packages, list):
        return sorted({name.split(".")[0] for name in packages})
    # setuptools' find directive (or no tomllib): every top-level package but tests and benchmarks.
    return sorted(p.parent.name for p in source_root.glob("*/__init__.py") if p.parent.name not in ("tests", "bench"))


def download_wheels(
    dest: Path,
    requirements: Sequence[str],
    target: Target,
    *,
    find_links: Sequence[Path] = (),
    no_index: bool = False,
) -> list[Path]:
    """Every wheel ``requirements`` need on ``target`` in ``dest``; returns the wheel files this
    download resolved (every wheel in ``dest`` when pip's output does not say which)."""
    dest.mkdir(parents=True, exist_ok=True)
    links = [dest, *find_links]
    constraints: list[str] = []
    also: set[Path] = set()  # torch is kept even where the requirements do not name it
    if target.torch is not None:
        torch = download_torch(dest, target, find_links=links, no_index=no_index)
        also.add(torch)
        constraints.append(f"torch=={wheel_version(torch)}")
    with tempfile.TemporaryDirectory(prefix="glmkb-pip-") as tmp:
        constraint_file = Path(tmp) / "constraints.txt"
        constraint_file.write_text("\n".join(constraints) + "\n", encoding="utf-8")
        for _ in range(MAX_SDIST_ROUNDS):
            proc = run_pip(
                pip_command(
                    "download", "--dest", str(dest), *target.pip_args(), "-c", str(constraint_file),
                    *source_flags(find_links=links, no_index=no_index), *requirements,
                ),
                what="wheels",
            )
            if proc.returncode == 0:
                return used_or_all_wheels(dest, proc.stdout, also=also)
            missing = _NO_MATCH.search(proc.stderr)
            if not missing:
                raise DownloadError(f"pip could not download the wheels: {_last_error(proc)}")
            build_pure_wheel(dest, missing.group(1), find_links=links, no_index=no_index)
    raise DownloadError(f"pip kept asking for source-only packages after {MAX_SDIST_ROUNDS} builds; see --verbose")


def used_or_all_wheels(dest: Path, pip_output: str, *, also: set[Path]) -> list[Path]:
    """The wheels pip resolved (and ``also``), or every wheel in ``dest`` when its output does
    not account for them: a reused wheels/ may hold an earlier build's, but keeping one too many
    beats deleting one this build needs."""
    used = reported_wheels(pip_output, dest)
    if used is None:
        log.warning("pip's output does not say which wheels it used; keeping every wheel in %s", dest)
        return sorted(dest.glob("*.whl"))
    return sorted(used | also)


def reported_wheels(pip_output: str, dest: Path) -> set[Path] | None:
    """The wheels in ``dest`` one ``pip download`` resolved, from its "Saved"/"File was already
    downloaded" lines; None unless each project of its "Successfully downloaded" line has one
    (``--quiet`` in a pip.conf, another pip's wording). A file of a project pip then dropped
    (tried while backtracking) is left out."""
    resolved = _RESOLVED.search(pip_output)
    if resolved is None:
        return None
    names = {canonical_name(name) for name in resolved.group(1).split()}
    files = {dest / Path(line).name for line in _REPORTED.findall(pip_output)}
    used = {f for f in files if f.is_file() and wheel_project(f) in names}
    return used if {wheel_project(f) for f in used} == names else None


def wheel_project(path: Path) -> str:
    """The normalized project name a wheel file is of (``Zope_Interface-5.0-...`` -> ``zope-interface``)."""
    return canonical_name(path.name.split("-")[0])


def canonical_name(name: str) -> str:
    """PEP 503's normalized project name, so pip's names match wheel file names."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_version(path: Path) -> str:
    """A wheel's version from its file name (``torch-2.5.1%2Bcpu-...`` -> ``2.5.1+cpu``)."""
    return path.name.split("-")[1].replace("%2B", "+")


def download_torch(dest: Path, target: Target, *, find_links: Sequence[Path], no_index: bool) -> Path:
    """torch of the target's build (``+cpu``, ``+cu124``) from PyTorch's index; its wheel file."""
    proc = run_pip(
        pip_command(
            "download", "--no-deps", "--dest", str(dest), *target.pip_args(),
            *source_flags(find_links=find_links, no_index=no_index, index_url=target.torch_index()), "torch",
        ),
        what="torch",
    )
    if proc.returncode != 0:
        raise DownloadError(f"pip could not download torch ({target.torch}): {_last_error(proc)}")
    wanted = f"+{target.torch}"
    reported = reported_wheels(proc.stdout, dest)  # the file pip chose, not an earlier build's
    candidates = dest.glob("torch-*.whl") if reported is None else reported
    found = [w for w in candidates if w.name.startswith("torch-") and wanted in w.name and _tags_fit(w, target)]
    if not found:
        raise DownloadError(f"no torch wheel of the {target.torch} build for Python {target.python_version} came down")
    return max(found, key=lambda p: p.stat().st_mtime)


def build_pure_wheel(dest: Path, requirement: str, *, find_links: Sequence[Path], no_index: bool) -> Path:
    """Build an sdist-only dependency into a wheel in ``dest``; refuse one with compiled code,
    which would only run on this machine."""
    with tempfile.TemporaryDirectory(prefix="glmkb-sdist-") as tmp:
        proc = run_pip(
            pip_command("wheel", "--no-deps", "-w", tmp, *source_flags(find_links=find_links, no_index=no_index), requirement),
            what=requirement,
        )
        built = list(Path(tmp).glob("*.whl"))
        if proc.returncode != 0 or not built:
            if _NO_MATCH.search(proc.stderr or ""):
                raise DownloadError(f"pip found no {requirement} (neither a wheel for the target nor its source) "
                                    "in the index or --find-links folders")
            raise DownloadError(f"no wheel of {requirement} for the target, and building it failed: {_last_error(proc)}")
        wheel = built[0]
        if not wheel.name.endswith("-none-any.whl"):
            raise BundleError(
                f"{requirement} has no wheel for the target and builds to {wheel.name} here; build it on "
                "a machine like the target and pass its folder with --find-links"
            )
        log.warning("built %s from its source distribution (no wheel on the index)", wheel.name)
        return Path(shutil.move(str(wheel), dest / wheel.name))


def wheel_info(path: Path) -> WheelInfo:
    """Name, version, licence and platform tags of a wheel, read from its METADATA."""
    with zipfile.ZipFile(path) as zf:
        meta_name = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        meta = HeaderParser().parsestr(zf.read(meta_name).decode("utf-8", "replace"))
    stem = path.name[: -len(".whl")].split("-")
    return WheelInfo(
        file=path.name,
        name=meta.get("Name", stem[0]),
        version=meta.get("Version", stem[1]),
        licence=licence_of(meta),
        platform_tags=tuple(stem[-1].split(".")),
    )


def licence_of(meta: object) -> str:
    """A wheel's licence in a few words: License-Expression, a short License field, or the
    trove classifiers; "unknown" when the metadata says nothing."""
    expression = meta.get("License-Expression")  # type: ignore[attr-defined]
    if expression:
        return expression.strip()
    text = (meta.get("License") or "").strip()  # type: ignore[attr-defined]
    if text and "\n" not in text and len(text) <= 80 and text.upper() != "UNKNOWN":
        return text
    classifiers = [c.split("::")[-1].strip() for c in meta.get_all("Classifier") or [] if c.startswith("License ::")]  # type: ignore[attr-defined]
    if classifiers:
        return ", ".join(classifiers)
    if text and text.upper() != "UNKNOWN":
        return text.splitlines()[0][:80] + " (see the wheel's licence file)"
    return "unknown (see the project's page)"


def _tags_fit(wheel: Path, target: Target) -> bool:
    tag = wheel.name.split("-")[2]
    return target.python is None or tag == "cp" + target.python.replace(".", "")


def _has_setuptools() -> bool:
    import importlib.util

    return importlib.util.find_spec("setuptools") is not None


def _last_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in (proc.stderr or proc.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return " ".join((errors or lines or ["pip failed"])[-2:])
