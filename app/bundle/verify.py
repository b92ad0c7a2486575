"""``glmkb bundle verify DIR``: check a bundle folder (SHA256SUMS) or a folder of its volumes
(VOLUMES.sha256) in place, the same checks install.sh and join.sh make."""

from __future__ import annotations

from pathlib import Path

from app.bundle.checksums import SUMS, check_sums
from app.bundle.errors import BundleError
from app.bundle.volumes import VOLUME_SUMS, check_volumes


def verify_path(folder: Path) -> tuple[str, list[str]]:
    """What ``folder`` is ("bundle" or "volumes") and its problems ([] = intact)."""
    if not folder.is_dir():
        raise BundleError(f"{folder} is not a folder; give a bundle or its volumes' folder")
    if (folder / VOLUME_SUMS).is_file():
        return "volumes", check_volumes(folder)
    if (folder / SUMS).is_file():
        return "bundle", check_sums(folder)
    raise BundleError(f"{folder} has neither {SUMS} nor {VOLUME_SUMS}: not a glmkb bundle")
