"""``glmkb bundle OUT``: every step of an offline bundle in order, each in its own module.

Layout of OUT::

    wheels/        glmkb and every dependency for the target (pip download)
    models/NAME/   chat model, embedding model; adapters/NAME/
    kb/NAME/       each knowledge base at one version (CURRENT + that v-* folder)
    config.yaml    relative paths to the above
    install.sh run.sh Dockerfile .dockerignore README.md bundle.json
    SHA256SUMS     every file above, written last

With ``split`` the bundle is also written as volumes in ``OUT-volumes/`` with join.sh.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from app.bundle.checksums import bundle_files, write_sums
from app.bundle.config_file import write_config
from app.bundle.errors import BundleError
from app.bundle.knowledge_bases import copy_knowledge_base, embedding_of
from app.bundle.models import copy_model, model_card_licence
from app.bundle.readme import BundledModel, write_readme
from app.bundle.target import Target, wheel_glibc
from app.bundle.templates import install_template
from app.bundle.volumes import split_bundle
from app.bundle.wheels import WheelInfo, build_project_wheel, download_wheels, find_source_root, wheel_info

log = logging.getLogger(__name__)

MARKER = "bundle.json"
SCRIPTS = ("install.sh", "run.sh")
# Installed size over the wheels' uncompressed size: .pyc files, pip and the venv itself.
# Measured 1.30-1.39 for the CPU set (tests/test_bundle_e2e.py: 2295 MiB of venv from 1762 MiB
# of uncompressed wheels; 1875 from 1353 before the document loaders); 1.5 keeps a margin.
INSTALL_MARGIN = 1.5
BASE_IMAGES = {
    "cpu": "python:{python}-slim-bookworm",
    "cu121": "pytorch/pytorch:2.5.1-cuda12.1-cudnn9-runtime",
    "cu124": "pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime",
}


@dataclass
class BundleResult:
    """What was built and how long each step took (seconds)."""

    path: Path
    wheels: list[WheelInfo]
    kbs: dict[str, str]
    volumes: list[Path] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        size = sum((self.path / rel).stat().st_size for rel in bundle_files(self.path, exclude=frozenset()))
        steps = ", ".join(f"{k} {v:.1f}s" for k, v in self.seconds.items())
        volumes = f", {len(self.volumes)} volumes in {self.volumes[0].parent}" if self.volumes else ""
        return f"bundle {self.path}: {len(self.wheels)} wheels, {size / 2**20:.1f} MiB{volumes} ({steps})"


def build_bundle(
    out: Path,
    *,
    target: Target,
    kb_root: Path,
    model_path: str | None = None,
    embedding: str | None = None,
    adapters: Sequence[str] = (),
    kb_names: Sequence[str] = (),
    split_size: int | None = None,
    find_links: Sequence[Path] = (),
    no_index: bool = False,
    project_wheel: Path | None = None,
) -> BundleResult:
    """Build the bundle in ``out`` (created, or a previous bundle's folder refreshed)."""
    prepare_folder(out, target)
    timer = StepTimer()
    with timer("wheels"):
        wheels = bundle_wheels(out / "wheels", target, find_links=find_links, no_index=no_index, project_wheel=project_wheel)
    with timer("models"):
        models = bundle_models(out, model_path=model_path, embedding=embedding, adapters=adapters)
    with timer("knowledge bases"):
        kbs = {name: copy_knowledge_base(kb_root, name, out / "kb") for name in kb_names}
        check_kb_embeddings(out / "kb", kbs, embedding=embedding)
    with timer("scripts"):
        project = next(w for w in wheels if w.name == "glmkb")
        requirement = f"glmkb=={project.version}"
        write_config(
            out,
            model=next((m.folder for m in models if m.role == "chat model"), None),
            embedding=next((m.folder for m in models if m.role == "embedding model"), None),
            adapter=next((m.folder for m in models if m.role == "adapter"), None),
            kb_names=list(kbs),
        )
        write_scripts(out, target=target, wheels=wheels, wheel_dir=out / "wheels", requirement=requirement)
        write_readme(out, target=describe(target), wheels=wheels, models=models, kbs=kbs, requirement=requirement)
        write_marker(out, target=target, kbs=kbs)
    with timer("checksums"):
        write_sums(out, bundle_files(out))
    result = BundleResult(path=out, wheels=wheels, kbs=kbs, seconds=timer.seconds)
    if split_size:
        with timer("volumes"):
            result.volumes = split_bundle(out, out.parent / f"{out.name}-volumes", size=split_size)
    return result


def prepare_folder(out: Path, target: Target) -> None:
    """Make ``out``; an earlier bundle for the same target keeps its wheels (pip skips them)."""
    if out.exists() and any(out.iterdir()):
        marker = out / MARKER
        if not marker.is_file():
            raise BundleError(f"{out} exists and is not a glmkb bundle; give a new or empty folder")
        previous = json.loads(marker.read_text(encoding="utf-8")).get("target")
        for child in out.iterdir():
            if child.name == "wheels" and previous == target_dict(target):
                continue
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, target=target, kbs={})  # first: a failed build can be run again in place


def bundle_wheels(
    dest: Path, target: Target, *, find_links: Sequence[Path], no_index: bool, project_wheel: Path | None
) -> list[WheelInfo]:
    """glmkb's wheel (built here or given) and everything it needs on the target."""
    dest.mkdir(parents=True, exist_ok=True)
    if project_wheel is None:
        root = find_source_root()
        if root is None:
            raise BundleError("glmkb is not running from its source tree; pass --glmkb-wheel with its wheel file")
        project_wheel = build_project_wheel(dest, source_root=root)
    elif project_wheel.parent.resolve() != dest.resolve():
        project_wheel = Path(shutil.copy2(project_wheel, dest / project_wheel.name))
    remove_other_project_wheels(dest, keep=project_wheel)
    files = download_wheels(dest, [str(project_wheel)], target, find_links=find_links, no_index=no_index)
    remove_unused_wheels(dest, keep=[project_wheel, *files])
    return [wheel_info(path) for path in files]


def remove_other_project_wheels(dest: Path, *, keep: Path) -> None:
    """Drop an earlier build's glmkb wheels from a reused wheels/ folder: the bundle pins
    glmkb's version from the one glmkb wheel there, so an older one would be installed."""
    for wheel in dest.glob("glmkb-*.whl"):
        if wheel.resolve() != keep.resolve():
            log.info("removing %s, an earlier build's glmkb wheel", wheel.name)
            wheel.unlink()


def remove_unused_wheels(dest: Path, *, keep: Sequence[Path]) -> None:
    """Drop the wheels this build did not resolve from a reused wheels/ folder (an older
    version of a dependency, a dropped one): else the README, the size estimate and the
    volumes would carry them, and ``pip install --find-links`` could still pick one."""
    kept = {path.resolve() for path in keep}
    for wheel in sorted(dest.glob("*.whl")):
        if wheel.resolve() not in kept:
            log.info("removing %s, an earlier build's wheel this build does not use", wheel.name)
            wheel.unlink()


def bundle_models(out: Path, *, model_path: str | None, embedding: str | None, adapters: Sequence[str]) -> list[BundledModel]:
    """Copy the chat model, embedding model and adapters; their rows for the README.

    Each keeps its folder's name: a knowledge base recognises its embedding model by it
    (kb.embedding.same_model)."""
    wanted = [("chat model", "models", model_path), ("embedding model", "models", embedding)]
    wanted += [("adapter", "adapters", ref) for ref in adapters]
    copied: list[BundledModel] = []
    for role, folder, ref in wanted:
        if not ref:
            continue
        rel = f"{folder}/{model_folder_name(ref)}"
        if any(m.folder == rel for m in copied):
            raise BundleError(f"two models would both be copied to {rel}; rename one folder")
        dest = copy_model(ref, out / rel)
        copied.append(BundledModel(role=role, folder=rel, source=ref, licence=model_card_licence(dest)))
    return copied


def model_folder_name(ref: str) -> str:
    """The folder name a model keeps in the bundle (``THUDM/chatglm3-6b`` -> ``chatglm3-6b``)."""
    path = Path(ref).expanduser()
    return path.resolve().name if path.is_dir() else ref.rstrip("/").split("/")[-1]


def check_kb_embeddings(kb_dir: Path, kbs: dict[str, str], *, embedding: str | None) -> None:
    """Refuse a dense knowledge base whose embedding model is not the bundled one."""
    from kb.embedding import same_model

    for name in kbs:
        recorded = embedding_of(kb_dir, name)
        if recorded == "none":
            continue
        if embedding is None or not same_model(recorded, model_folder_name(embedding)):
            raise BundleError(
                f"knowledge base {name!r} was built with embedding model {recorded!r}; pass it with --embedding"
            )


def write_scripts(out: Path, *, target: Target, wheels: list[WheelInfo], wheel_dir: Path, requirement: str) -> None:
    """install.sh, run.sh, Dockerfile and .dockerignore, filled in for this bundle."""
    glibc = max((g for w in wheels if (g := needed_glibc(w))), default=None)
    glibc_text = f"{glibc[0]}.{glibc[1]}" if glibc else ""
    need_mb = int(installed_size(wheel_dir) * INSTALL_MARGIN / 2**20) + 50
    values = {
        "PYTHON": target.python_version,
        "ARCH": target.arch,
        "GLIBC": glibc_text,
        "NEED_MB": need_mb,
        "REQUIREMENT": requirement,
    }
    for name in SCRIPTS:
        path = out / name
        path.write_text(install_template(name, **values), encoding="utf-8")
        path.chmod(0o755)
    base = BASE_IMAGES.get(target.torch or "", BASE_IMAGES["cu124"]).format(python=target.python_version)
    (out / "Dockerfile").write_text(
        install_template("Dockerfile", PYTHON=target.python_version, GLIBC_OR_ANY=glibc_text or "any", BASE_IMAGE=base),
        encoding="utf-8",
    )
    (out / ".dockerignore").write_text(".venv\n", encoding="utf-8")


def needed_glibc(wheel: WheelInfo) -> tuple[int, int] | None:
    """The oldest glibc a wheel runs on: the lowest of its tags (``manylinux1...manylinux_2_28``
    runs on 2.5), None for pure wheels."""
    versions = [g for tag in wheel.platform_tags if (g := wheel_glibc(tag))]
    return min(versions) if versions else None


def installed_size(wheel_dir: Path) -> int:
    """Uncompressed size of every wheel (what the venv will hold, before .pyc files)."""
    total = 0
    for wheel in wheel_dir.glob("*.whl"):
        with zipfile.ZipFile(wheel) as zf:
            total += sum(info.file_size for info in zf.infolist())
    return total


def write_marker(out: Path, *, target: Target, kbs: dict[str, str]) -> None:
    data = {"format": 1, "target": target_dict(target), "knowledge_bases": kbs, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (out / MARKER).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def target_dict(target: Target) -> dict[str, str | None]:
    return {"python": target.python_version, "platform": target.platform, "arch": target.arch, "torch": target.torch}


def describe(target: Target) -> str:
    platform = target.platform or f"this machine's platform ({target.arch})"
    return f"Python {target.python_version}, {platform}, torch build {target.torch or 'PyPI default'}"


class StepTimer:
    """``with timer("name"):`` records each step's wall time in ``seconds``."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> "StepTimer":
        self._name = name
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()
        log.info("bundle: %s...", self._name)

    def __exit__(self, *exc: object) -> None:
        self.seconds[self._name] = time.perf_counter() - self._start
