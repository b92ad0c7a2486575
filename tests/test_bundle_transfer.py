"""--split volumes: join.sh round-trip, and a damaged or missing volume refused by join.sh and
by ``glmkb bundle verify`` before anything is unpacked."""

from __future__ import annotations

import filecmp
import os
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.bundle import BundleError
from app.bundle.checksums import bundle_files, write_sums
from app.bundle.cli import bundle as bundle_cli
from app.bundle.volumes import VOLUME_SUMS, parse_size, split_bundle


@pytest.fixture
def small_bundle(tmp_path: Path) -> Path:
    """A folder shaped like a bundle: a few files (one of 300 KiB random bytes) + SHA256SUMS."""
    out = tmp_path / "glmkb-bundle"
    (out / "wheels").mkdir(parents=True)
    (out / "wheels" / "big.whl").write_bytes(os.urandom(300 * 1024))
    (out / "config.yaml").write_text("kb_root: kb\n", encoding="utf-8")
    (out / "install.sh").write_text("#!/bin/sh\necho hi\n")
    (out / "install.sh").chmod(0o755)
    (out / "kb" / "三国").mkdir(parents=True)
    (out / "kb" / "三国" / "CURRENT").write_text("v-1\n")
    write_sums(out, bundle_files(out))
    return out


def join(volumes: Path, dest: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["./join.sh", str(dest)], cwd=volumes, capture_output=True, text=True, timeout=60)


def test_split_and_join_round_trip(tmp_path: Path, small_bundle: Path) -> None:
    volumes = split_bundle(small_bundle, tmp_path / "vols", size=64 * 1024)
    assert len(volumes) >= 5 and all(v.stat().st_size == 64 * 1024 for v in volumes[:-1])
    assert [v.name for v in volumes[:2]] == ["glmkb-bundle.tar.001", "glmkb-bundle.tar.002"]
    proc = join(tmp_path / "vols", tmp_path / "server")
    assert proc.returncode == 0, proc.stderr
    joined = tmp_path / "server" / "glmkb-bundle"
    cmp = filecmp.dircmp(small_bundle, joined)
    assert not cmp.diff_files and not cmp.left_only and not cmp.right_only
    assert filecmp.cmp(small_bundle / "wheels/big.whl", joined / "wheels/big.whl", shallow=False)
    assert os.access(joined / "install.sh", os.X_OK)  # modes survive the tar
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=joined).returncode == 0
    assert CliRunner().invoke(bundle_cli, ["verify", str(tmp_path / "vols")]).exit_code == 0


def test_a_corrupted_volume_is_refused_by_join_and_verify(tmp_path: Path, small_bundle: Path) -> None:
    volumes = split_bundle(small_bundle, tmp_path / "vols", size=64 * 1024)
    damaged = volumes[2]
    data = bytearray(damaged.read_bytes())
    data[1000] ^= 0xFF
    damaged.write_bytes(bytes(data))
    proc = join(tmp_path / "vols", tmp_path / "server")
    assert proc.returncode == 1
    assert "damaged" in proc.stderr and damaged.name in proc.stderr
    assert not (tmp_path / "server").exists()  # nothing unpacked
    result = CliRunner().invoke(bundle_cli, ["verify", str(tmp_path / "vols")])
    assert result.exit_code == 1 and f"{damaged.name}: checksum mismatch" in result.output


def test_a_missing_volume_is_refused(tmp_path: Path, small_bundle: Path) -> None:
    volumes = split_bundle(small_bundle, tmp_path / "vols", size=64 * 1024)
    volumes[-1].unlink()
    proc = join(tmp_path / "vols", tmp_path / "server")
    assert proc.returncode == 1 and volumes[-1].name in proc.stderr
    result = CliRunner().invoke(bundle_cli, ["verify", str(tmp_path / "vols")])
    assert result.exit_code == 1 and f"{volumes[-1].name}: missing" in result.output
    (tmp_path / "vols" / VOLUME_SUMS).unlink()
    proc = join(tmp_path / "vols", tmp_path / "server")
    assert proc.returncode == 1 and "VOLUMES.sha256 is missing" in proc.stderr


@pytest.mark.parametrize(("text", "size"), [("2G", 2 << 30), ("500M", 500 << 20), ("4096k", 4 << 20), ("1.5G", 3 << 29), ("100", 100)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "0", "2X", "-1G", "G"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(BundleError, match="not a size"):
        parse_size(text)
