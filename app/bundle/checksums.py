"""SHA256SUMS: one line per file in ``sha256sum`` format, so the offline side checks a bundle
with coreutils alone (``sha256sum -c SHA256SUMS``) before anything runs."""

from __future__ import annotations

from pathlib import Path

from kb.storage import file_sha256

SUMS = "SHA256SUMS"


def bundle_files(root: Path, *, exclude: frozenset[str] = frozenset({SUMS})) -> list[Path]:
    """Every regular file under ``root`` (sorted, relative), bar ``exclude`` and the install's
    own venv and state."""
    skip_dirs = {".venv", "__pycache__"}
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.as_posix() not in exclude and not skip_dirs & set(rel.parts):
            files.append(rel)
    return files


def write_sums(root: Path, files: list[Path], *, name: str = SUMS) -> Path:
    """Write ``name`` listing the SHA-256 of ``files`` (relative to ``root``)."""
    lines = [f"{file_sha256(root / rel)}  {rel.as_posix()}\n" for rel in files]
    out = root / name
    out.write_text("".join(lines), encoding="utf-8")
    return out


def check_sums(root: Path, *, name: str = SUMS) -> list[str]:
    """Problems found checking ``root/name``: missing, corrupt or unlisted files ([] = fine)."""
    sums = root / name
    if not sums.is_file():
        return [f"{name} is missing: not a complete glmkb bundle"]
    problems = []
    for line in sums.read_text(encoding="utf-8").splitlines():
        digest, _, rel = line.partition("  ")
        if not rel or ".." in Path(rel).parts or rel.startswith("/"):
            problems.append(f"{name} has a bad line: {line[:80]!r}")
            continue
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif file_sha256(path) != digest:
            problems.append(f"{rel}: checksum mismatch (damaged in transfer)")
    return problems
