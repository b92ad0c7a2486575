"""``--split 2G``: the bundle as one tar stream cut into numbered volumes plus ``join.sh``.

Large files break in transfer (the seeds' 大文件传输 advice); volumes of a fixed size can be
re-sent one by one. ``VOLUMES.sha256`` lists every volume's checksum and join.sh refuses to
unpack unless all of them match, using only sha256sum, cat and tar (no 7z on the server).
"""

from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path

from app.bundle.checksums import check_sums, write_sums
from app.bundle.errors import BundleError
from app.bundle.templates import install_template

VOLUME_SUMS = "VOLUMES.sha256"
JOIN = "join.sh"
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)B?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """``2G`` -> 2147483648 (binary units, like split(1))."""
    match = _SIZE.match(text.strip())
    if not match or float(match.group(1)) <= 0:
        raise BundleError(f"--split {text!r} is not a size like 2G, 500M or 4096K")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


class VolumeWriter(io.RawIOBase):
    """A write-only file that spills into ``prefix.001``, ``prefix.002``... of ``size`` bytes."""

    def __init__(self, prefix: Path, size: int) -> None:
        self.prefix, self.size = prefix, size
        self.paths: list[Path] = []
        self._file: io.BufferedWriter | None = None
        self._left = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        view = memoryview(data)
        while view:
            if self._left == 0:
                self._next_volume()
            n = min(self._left, len(view))
            assert self._file is not None
            self._file.write(view[:n])
            self._left -= n
            view = view[n:]
        return len(data)

    def _next_volume(self) -> None:
        if self._file:
            self._file.close()
        path = self.prefix.with_name(f"{self.prefix.name}.{len(self.paths) + 1:03d}")
        self.paths.append(path)
        self._file = path.open("wb")
        self._left = self.size

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._file = None
        super().close()


def split_bundle(bundle: Path, dest: Path, *, size: int) -> list[Path]:
    """Write ``bundle`` as volumes ``dest/<name>.tar.NNN`` + VOLUMES.sha256 + join.sh."""
    dest.mkdir(parents=True, exist_ok=True)
    remove_old_volumes(dest, bundle.name)
    writer = VolumeWriter(dest / f"{bundle.name}.tar", size)
    with writer, tarfile.open(fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(bundle, arcname=bundle.name, filter=no_owner)
    join = dest / JOIN
    join.write_text(install_template("join.sh", BUNDLE_NAME=bundle.name), encoding="utf-8")
    join.chmod(0o755)
    write_sums(dest, [p.relative_to(dest) for p in writer.paths], name=VOLUME_SUMS)
    return writer.paths


def remove_old_volumes(dest: Path, name: str) -> None:
    """Delete an earlier split's ``name.tar.NNN``: a smaller bundle would leave its extra
    volumes beside the new ones, unlisted, yet copied to the server with them."""
    for old in dest.glob(f"{name}.tar.*"):
        if old.suffix[1:].isdigit() and old.is_file():
            old.unlink()


def no_owner(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """No builder's uid/user name in the volumes: tar run as root on the server would give the
    files to whichever server account has that uid (able to rewrite install.sh); this way
    they belong to whoever runs join.sh."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def check_volumes(folder: Path) -> list[str]:
    """Problems with the volumes in ``folder`` ([] = all present and intact)."""
    problems = check_sums(folder, name=VOLUME_SUMS)
    listed = {ln.partition("  ")[2] for ln in (folder / VOLUME_SUMS).read_text().splitlines()} if (folder / VOLUME_SUMS).is_file() else set()
    numbers = sorted(int(n.rsplit(".", 1)[1]) for n in listed if n.rsplit(".", 1)[-1].isdigit())
    if numbers and numbers != list(range(1, len(numbers) + 1)):
        problems.append(f"{VOLUME_SUMS} lists volumes {numbers}, not 1..{len(numbers)}")
    return problems
