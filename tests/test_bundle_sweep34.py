"""Offline bundle sweep: regressions for bugs found by building, splitting, joining and
installing small bundles (fake wheels, no network, no weights).

Each test's docstring names the bug it guards against.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from app.bundle import build_bundle, make_target
from app.bundle.checksums import bundle_files, write_sums
from app.bundle.target import Target
from app.bundle.templates import install_template
from app.bundle.volumes import VOLUME_SUMS, split_bundle
from tests.test_bundle import _own_pip_config, fake_wheel  # noqa: F401 - the autouse fixture applies here too

NAME = "glmkb-bundle"


@pytest.fixture
def house(tmp_path: Path) -> Path:
    """fakedep needing fakeleaf: what the fake glmkb wheels need."""
    folder = tmp_path / "house"
    fake_wheel(folder, "fakedep", "2.0", requires=("fakeleaf>=1",))
    fake_wheel(folder, "fakeleaf", "1.5")
    return folder


def build(out: Path, house: Path, version: str = "0.1.0", **kwargs: object) -> Path:
    """A bundle of a fake glmkb ``version`` (pure wheels from ``house``) in ``out``."""
    own = fake_wheel(out.parent / f"own-{version}", "glmkb", version, requires=("fakedep",))
    kwargs.setdefault("target", Target())
    build_bundle(out, kb_root=out.parent / "no-kbs", find_links=[house], no_index=True, project_wheel=own, **kwargs)
    return out


def small_bundle(root: Path) -> Path:
    """A folder shaped like a bundle (config.yaml, a Chinese-named KB file, SHA256SUMS)."""
    out = root / NAME
    (out / "kb" / "三国").mkdir(parents=True)
    (out / "kb" / "三国" / "CURRENT").write_text("v-1\n", encoding="utf-8")
    (out / "config.yaml").write_text("kb_root: kb\n", encoding="utf-8")
    (out / "blob.bin").write_bytes(os.urandom(200 * 1024))
    write_sums(out, bundle_files(out))
    return out


def run_join(volumes: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(volumes / "join.sh"), *args], cwd=cwd, capture_output=True, text=True, timeout=60)


def run_install(out: Path, python: str = sys.executable) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(["./install.sh"], cwd=out, env=env, capture_output=True, text=True, timeout=300)


# ----------------------------------------------------------------------------- build / split


def test_a_rebuild_with_a_newer_glmkb_pins_the_newer_one(tmp_path: Path, house: Path) -> None:
    """Bug: rebuilding a bundle in place kept the earlier glmkb wheel in wheels/, and the
    bundle pinned the first glmkb wheel by name, so install.sh installed the OLD glmkb."""
    out = build(tmp_path / NAME, house, "0.1.0")
    build(out, house, "0.2.0")
    assert [p.name for p in (out / "wheels").glob("glmkb-*")] == ["glmkb-0.2.0-py3-none-any.whl"]
    assert 'REQUIREMENT="glmkb==0.2.0"' in (out / "install.sh").read_text(encoding="utf-8")


def test_a_smaller_resplit_leaves_no_stale_volumes(tmp_path: Path) -> None:
    """Bug: splitting again into fewer volumes left the earlier split's extra volumes in
    OUT-volumes/ (unlisted, yet copied along; verify called the folder intact)."""
    bundle = small_bundle(tmp_path)
    vols = tmp_path / "vols"
    assert len(split_bundle(bundle, vols, size=20 * 1024)) > 5
    kept = split_bundle(bundle, vols, size=150 * 1024)
    assert sorted(p.name for p in vols.glob(f"{NAME}.tar.*")) == [p.name for p in kept]


def test_volumes_carry_no_builder_owner(tmp_path: Path) -> None:
    """Bug: the volumes carried the builder's uid and user name; tar run as root on the server
    gives the files to whichever account has them there (able to rewrite install.sh)."""
    paths = split_bundle(small_bundle(tmp_path), tmp_path / "vols", size=1 << 20)
    with tarfile.open(paths[0]) as tar:
        members = tar.getmembers()
    assert members and all((m.uid, m.gid, m.uname, m.gname) == (0, 0, "", "") for m in members)


@pytest.mark.parametrize(("platform", "arch"), [
    ("musllinux_1_2_x86_64", "x86_64"), ("musllinux_1_1_aarch64", "aarch64"), ("macosx_11_0_arm64", "arm64"),
    ("manylinux_2_28_x86_64", "x86_64"), ("manylinux2014_aarch64", "aarch64"), ("linux_x86_64", "x86_64"),
])
def test_target_arch_of_every_linux_tag(platform: str, arch: str) -> None:
    """Bug: ``--platform musllinux_1_2_x86_64`` gave arch ``1_2_x86_64``, so install.sh
    refused every machine ("the wheels are for 1_2_x86_64 but this machine is x86_64")."""
    assert make_target(python="3.11", platform=platform, torch=None).arch == arch


# ----------------------------------------------------------------------------- join.sh


@pytest.fixture
def volumes(tmp_path: Path) -> Path:
    split_bundle(small_bundle(tmp_path / "src"), tmp_path / "vols", size=64 * 1024)
    return tmp_path / "vols"


def test_join_takes_a_relative_dest_from_the_callers_folder(tmp_path: Path, volumes: Path) -> None:
    """Bug: join.sh cd'd to its own folder first, so ``/media/usb/join.sh srv`` unpacked into
    /media/usb/srv and its "next: cd srv/..." hint (unquoted) pointed nowhere."""
    here = tmp_path / "服务器 一"
    here.mkdir()
    proc = run_join(volumes, "目标 dir", cwd=here)
    assert proc.returncode == 0, proc.stderr
    assert (here / "目标 dir" / NAME / "kb" / "三国" / "CURRENT").is_file()
    assert not (volumes / "目标 dir").exists()
    assert f"cd '{here / '目标 dir' / NAME}' && ./install.sh" in proc.stdout
    assert not list((here / "目标 dir").glob(".*partial"))


def test_join_refuses_to_unpack_over_an_existing_bundle(tmp_path: Path, volumes: Path) -> None:
    """Bug: joining a new bundle over an installed one silently replaced its config.yaml and
    rolled each knowledge base's CURRENT back to the bundled version (documents added on the
    server vanished from the app)."""
    assert run_join(volumes, str(tmp_path / "srv"), cwd=tmp_path).returncode == 0
    current = tmp_path / "srv" / NAME / "kb" / "三国" / "CURRENT"
    current.write_text("v-2-added-on-the-server\n", encoding="utf-8")
    proc = run_join(volumes, str(tmp_path / "srv"), cwd=tmp_path)
    assert proc.returncode == 1 and "already exists" in proc.stderr
    assert current.read_text(encoding="utf-8") == "v-2-added-on-the-server\n"


def test_a_failed_unpack_leaves_nothing_half_unpacked(tmp_path: Path, volumes: Path) -> None:
    """Bug: tar failing mid-stream (a full disk) left a half-unpacked bundle folder behind.
    Here the volumes' checksums match but the stream is not a whole tar."""
    last = sorted(volumes.glob(f"{NAME}.tar.*"))[-1]
    last.write_bytes(b"\xff" * 700)
    write_sums(volumes, sorted(p.relative_to(volumes) for p in volumes.glob(f"{NAME}.tar.*")), name=VOLUME_SUMS)
    proc = run_join(volumes, str(tmp_path / "srv"), cwd=tmp_path)
    assert proc.returncode == 1 and "nothing was left there" in proc.stderr
    assert list((tmp_path / "srv").iterdir()) == []


# ----------------------------------------------------------------------------- install.sh / run.sh


def test_install_remakes_a_venv_left_without_pip(tmp_path: Path, house: Path) -> None:
    """Bug: an install interrupted (or out of disk) during the venv's ensurepip left
    .venv/bin/python without pip; every later ./install.sh then failed with "No module named
    pip" although README promises it can be run again."""
    out = build(tmp_path / NAME, house)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(out / ".venv")], check=True)
    proc = run_install(out)
    assert proc.returncode == 0, proc.stderr
    assert "making it again" in proc.stderr
    code = "import glmkb; print(glmkb.VERSION)"
    assert subprocess.run([out / ".venv/bin/python", "-c", code], capture_output=True, text=True).stdout == "0.1.0\n"


def test_a_failed_venv_leaves_no_venv_and_names_the_likely_causes(tmp_path: Path, house: Path) -> None:
    """Bug: any venv failure (a read-only folder, a full disk) was reported as "install the
    venv module", and the half-made .venv stayed behind."""
    out = build(tmp_path / NAME, house)
    fake = tmp_path / "python-venv-breaks"
    fake.write_text(f'#!/bin/sh\nif [ "$1 $2" = "-m venv" ]; then mkdir -p .venv/bin; echo "Errno 28" >&2; exit 1; fi\n'
                    f'exec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    proc = run_install(out, python=str(fake))
    assert proc.returncode == 1 and "a full disk, a folder you cannot write to" in proc.stderr
    assert not (out / ".venv").exists()


@pytest.mark.parametrize("flag", ["--host", "--port"])
def test_run_sh_flag_without_a_value_is_one_line(tmp_path: Path, flag: str) -> None:
    """Bug: ``./run.sh --host`` died with bash's "$2: unbound variable"."""
    run = tmp_path / "run.sh"
    run.write_text(install_template("run.sh"), encoding="utf-8")
    run.chmod(0o755)
    proc = subprocess.run([str(run), flag], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2 and proc.stderr == f"run.sh: {flag} needs a value (e.g. --host 0.0.0.0, --port 7860)\n"
