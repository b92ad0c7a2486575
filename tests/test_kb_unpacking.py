"""Archives are unpacked beside the knowledge bases (``kb.unpacking``), never in the system's /tmp.

The bug: ``ingest build`` and the web upload unpacked into ``tempfile.TemporaryDirectory`` in /tmp:
RAM on a tmpfs /tmp, and a folder left there for good by every build killed with SIGKILL (about 500
a CI run from the kill tests; with a big archive, all of its unpacked documents).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pytest

from app.services import Services
from configs import Settings
from ingest.cli import main
from kb.unpacking import MAKING_S, PREFIX, remove_stale, unpacking_folder

REPO = Path(__file__).resolve().parents[1]
# Child processes that unpack into a folder under argv[1]: one SIGKILLs itself there, one prints the
# folder's name and waits.
DIE_HOLDING_A_FOLDER = """
import os, signal, sys
from pathlib import Path
from kb.unpacking import unpacking_folder
with unpacking_folder(Path(sys.argv[1])) as folder:
    (folder / "member.txt").write_text("half an archive")
    os.kill(os.getpid(), signal.SIGKILL)
"""
HOLD_A_FOLDER = """
import sys, time
from pathlib import Path
from kb.unpacking import unpacking_folder
with unpacking_folder(Path(sys.argv[1])) as folder:
    print(folder.name, flush=True)
    time.sleep(600)
"""


@pytest.fixture()
def archive(tmp_path: Path) -> Path:
    path = tmp_path / "资料.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("制度/请假.txt", "病假须有医院证明。\n事假须提前一日申请。\n")
        z.writestr("说明.md", "# 说明\n本资料供新员工阅读。\n")
    return path


@pytest.fixture()
def system_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder standing in for /tmp (``tempfile.gettempdir()``; jieba keeps its cache file there)."""
    folder = tmp_path / "system-tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


@pytest.fixture()
def unpacked_into(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The folders ``expand_documents`` is asked to unpack into (the CLI and the upload both call it)."""
    import kb.loaders.folders

    asked: list[Path] = []
    real = kb.loaders.folders.expand_documents

    def expand_documents(paths, *, source, unpack_into):  # type: ignore[no-untyped-def]
        asked.append(unpack_into)
        return real(paths, source=source, unpack_into=unpack_into)

    monkeypatch.setattr(kb.loaders.folders, "expand_documents", expand_documents)
    return asked


def folders_in(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if p.is_dir()]


def unpacking_folders(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob(f"{PREFIX}*"))


def test_the_folder_is_under_the_root_and_gone_after_success_or_failure(tmp_path: Path) -> None:
    root = tmp_path / "kbs"
    with unpacking_folder(root) as folder:
        assert folder.parent == root and folder.name.startswith(PREFIX)
        (folder / "a.txt").write_text("x")
    with pytest.raises(RuntimeError), unpacking_folder(root) as folder:
        (folder / "b.txt").write_text("y")
        raise RuntimeError("a document failed")
    assert unpacking_folders(root) == []


def test_only_folders_whose_owner_is_gone_are_removed(tmp_path: Path) -> None:
    """Ownership is the ``.owner`` file's lock, which the kernel drops when its process dies however
    it dies; a folder without one yet is being made, unless it is older than ``MAKING_S``."""
    root = tmp_path / "kbs"
    owner = subprocess.Popen(
        [sys.executable, "-c", HOLD_A_FOLDER, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        busy = owner.stdout.readline().strip()  # type: ignore[union-attr]
        killed = subprocess.run([sys.executable, "-c", DIE_HOLDING_A_FOLDER, str(root)], cwd=REPO, timeout=60)
        assert killed.returncode == -signal.SIGKILL
        (dead,) = (name for name in unpacking_folders(root) if name != busy)
        making, abandoned = root / f"{PREFIX}making", root / f"{PREFIX}abandoned"
        making.mkdir()
        abandoned.mkdir()
        old = time.time() - MAKING_S - 5
        os.utime(abandoned, (old, old))
        with unpacking_folder(root) as mine:  # its own sweep runs first, then the nested one
            assert sorted(remove_stale(root)) == [] and mine.name in unpacking_folders(root)
        assert unpacking_folders(root) == sorted([busy, making.name])
        assert dead not in unpacking_folders(root)
    finally:
        owner.kill()
        owner.wait(timeout=30)
    assert remove_stale(root) == [busy]


def test_ingest_build_unpacks_beside_the_knowledge_bases(
    archive: Path, tmp_path: Path, system_tmp: Path, unpacked_into: list[Path]
) -> None:
    root = tmp_path / "kbs"
    assert main(["build", str(archive), "--kb", "zip", "--kb-root", str(root), "--embedding", "none", "-q"]) == 0
    assert [p.parent for p in unpacked_into] == [root]
    assert folders_in(system_tmp) == [] and unpacking_folders(root) == []


def test_the_web_upload_unpacks_beside_the_knowledge_bases(
    archive: Path, tmp_path: Path, system_tmp: Path, unpacked_into: list[Path]
) -> None:
    root = tmp_path / "kbs"
    services = Services(Settings(kb_root=root))
    services.create_kb("up", embedding_model="none")
    assert sorted(services.add_files("up", [archive]).added) == ["资料.zip/制度/请假.txt", "资料.zip/说明.md"]
    assert [p.parent for p in unpacked_into] == [root]
    assert folders_in(system_tmp) == [] and unpacking_folders(root) == []


def test_a_build_killed_while_unpacking_leaves_a_folder_the_next_build_removes(archive: Path, tmp_path: Path) -> None:
    root = tmp_path / "kbs"
    killed = subprocess.run([sys.executable, "-c", DIE_HOLDING_A_FOLDER, str(root)], cwd=REPO, capture_output=True,
                            timeout=60)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert len(unpacking_folders(root)) == 1
    assert main(["build", str(archive), "--kb", "zip", "--kb-root", str(root), "--embedding", "none", "-q"]) == 0
    assert unpacking_folders(root) == []
