"""Archives in volumes given to a build: which files are one archive, and in what order.

Big archives are often passed around split into volumes: RAR's ``资料.part1.rar``,
``资料.part2.rar``, ... (RAR 3+ naming; ``part01``/``part001`` too) or its older ``资料.rar``,
``资料.r00``, ``资料.r01``, ...; 7-Zip's "split to volumes" ``资料.7z.001``, ``资料.7z.002``, ... (also
of a ``.zip`` or ``.rar``: plain pieces of the archive's bytes). Read one by one, every volume but
the last is a cut archive and the later ones hold halves of files. Here the volumes of a set are
gathered, from the paths given (a web upload's copies each sit in a folder of their own)
and from the first volume's own folder, and handed to libarchive together
(``kb.loaders.archives``); the set is read once, as its first volume, and recorded under it
(``资料.part1.rar/制度/请假.txt``). A set without its first volume, or with a gap, is one line that
names the missing volume; so is a set of a ZIP or RAR without its last volume, told by the archive's own
end record (``kb.loaders.archive_ends``: libarchive would otherwise build from the volumes there are).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kb.errors import DocumentLoadError
from kb.loaders.archive_ends import cut_short

_PART = re.compile(r"^(?P<stem>.+)\.part(?P<number>\d{1,3})\.rar$", re.IGNORECASE)
_OLD = re.compile(r"^(?P<stem>.+)\.r(?P<number>\d{2})$", re.IGNORECASE)  # .r00 is volume 2, after .rar
_SPLIT = re.compile(r"^(?P<stem>.+\.(?:7z|zip|rar))\.(?P<number>\d{3})$", re.IGNORECASE)  # 7-Zip: .001 is the first


@dataclass(frozen=True)
class Volume:
    """Where a file name puts it in a set: ``number`` 1 for the first volume."""

    stem: str
    number: int
    style: str  # "part" (资料.part2.rar), "old" (资料.rar, 资料.r00, ...) or "split" (资料.7z.001, ...)
    width: int = 0  # digits of the part number as written (part1 / part01 / part001)

    @property
    def key(self) -> tuple[str, str]:
        return self.stem.casefold(), self.style

    def name(self, number: int) -> str:
        """The file name of volume ``number`` of this set."""
        if self.style == "part":
            return f"{self.stem}.part{number:0{self.width}d}.rar"
        if self.style == "split":
            return f"{self.stem}.{number:03d}"
        return f"{self.stem}.rar" if number == 1 else f"{self.stem}.r{number - 2:02d}"


def may_be_a_volume(name: str) -> bool:
    """Whether a file named ``name`` may be one volume of a set, by its name alone (an archive's
    member: nothing lies beside it yet). Any ``.rar`` may be the first of the older naming."""
    base = PurePosixPath(name).name
    return bool(_PART.match(base) or _SPLIT.match(base) or _OLD.match(base)) or base.lower().endswith(".rar")


def volume_of(path: Path) -> Volume | None:
    """Where ``path``'s name puts it in a set of volumes, or None. An old-style ``资料.rar`` counts
    as a first volume only where ``资料.r00`` lies beside it."""
    if m := _PART.match(path.name):
        return Volume(m["stem"], int(m["number"]), "part", len(m["number"]))
    if (m := _SPLIT.match(path.name)) and int(m["number"]) > 0:
        return Volume(m["stem"], int(m["number"]), "split", 3)
    if m := _OLD.match(path.name):
        return Volume(m["stem"], int(m["number"]) + 2, "old")
    if path.suffix.lower() == ".rar" and (path.with_suffix(".r00").exists() or path.with_suffix(".R00").exists()):
        return Volume(path.stem, 1, "old")
    return None


@dataclass
class VolumeSets:
    """The paths given, each multi-volume set in it replaced by its first volume
    (``volumes[first]``: the later ones, in order)."""

    paths: list[Path] = field(default_factory=list)
    volumes: dict[Path, list[Path]] = field(default_factory=dict)


def gather_volumes(paths: Sequence[Path], *, unread: list[str] | None = None) -> VolumeSets:
    """``paths`` with each set of volumes among them gathered into its first volume (the
    others found among ``paths`` or beside the first); DocumentLoadError (one line) for a set whose
    first volume is missing or that has a gap, or with ``unread`` given, that line appended to it
    and the set left out. Other paths pass as they are, in their order."""
    found: dict[tuple[str, str], dict[int, Path]] = {}
    samples: dict[tuple[str, str], Volume] = {}
    slots: dict[tuple[str, str], int] = {}
    out = VolumeSets()
    for path in paths:
        volume = volume_of(path) if path.is_file() else None  # a missing path is reported where it is read
        if volume is None:
            out.paths.append(path)
            continue
        if volume.key not in found:  # the set takes the place of its first-named volume
            found[volume.key], samples[volume.key], slots[volume.key] = {}, volume, len(out.paths)
            out.paths.append(path)
        other = found[volume.key].setdefault(volume.number, path)
        if other.resolve() != path.resolve():
            raise DocumentLoadError(f"{other} and {path} are both volume {volume.number} of a multi-volume "
                                    "archive: build one set at a time")
    left_out = []
    for key, given in found.items():
        try:
            first, rest = _complete_set(samples[key], given)
        except DocumentLoadError as e:
            if unread is None:
                raise
            unread.append(str(e))
            left_out.append(slots[key])
            continue
        out.paths[slots[key]] = first
        out.volumes[first] = rest
    out.paths = [p for n, p in enumerate(out.paths) if n not in left_out]
    return out


def _beside(first: Path) -> list[Path]:
    """The files in the first volume's folder (none where it cannot be listed)."""
    try:
        return sorted(p for p in first.parent.iterdir() if p.is_file())
    except OSError:
        return []


def _complete_set(sample: Volume, given: dict[int, Path]) -> tuple[Path, list[Path]]:
    """The first volume and the later ones, in order: those given, then those of the same set beside
    the first; DocumentLoadError where volume 1 is missing or a volume before the last one is, or
    a ZIP's or RAR's last one (its volumes do not end with the archive's end record: ``cut_short``)."""
    if 1 not in given:
        low = min(given)
        raise DocumentLoadError(
            f"{given[low].name} is volume {low} of a multi-volume archive whose first volume "
            f"({sample.name(1)}) was not given: give all its volumes together")
    first = given[1]
    volumes = dict(given)
    for beside in _beside(first):
        volume = volume_of(beside)
        if volume is not None and volume.key == sample.key:
            volumes.setdefault(volume.number, beside)
    missing = [n for n in range(2, max(volumes) + 1) if n not in volumes]
    if not missing and cut_short([volumes[n] for n in sorted(volumes)]):
        missing = [max(volumes) + 1]
    if missing:
        raise DocumentLoadError(
            f"{first.name} is a multi-volume archive, and its volume {missing[0]} "
            f"({sample.name(missing[0])}) is missing: give all its volumes together")
    return first, [volumes[n] for n in range(2, max(volumes) + 1)]

