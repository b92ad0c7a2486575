"""Archives are unpacked beside the knowledge bases (``kb.unpacking``), never in the system's /tmp.

The bug: ``ingest build`` and the web upload unpacked into ``tempfile.TemporaryDirectory`` in /tmp:
RAM on a tmpfs /tmp, and a folder left there for good by every build killed with SIGKILL (about 500
a CI run from the kill tests; with a big archive, all of its unpacked documents).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

from app.services import Services
from configs import Settings
from ingest.cli import main
from kb.unpacking import PREFIX, remove_stale, unpacking_folder

REPO = Path(__file__).resolve().parents[1]


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
        assert folder.parent == root and folder.name.startswith(f"{PREFIX}{os.getpid()}@")
        (folder / "a.txt").write_text("x")
    with pytest.raises(RuntimeError), unpacking_folder(root) as folder:
        (folder / "b.txt").write_text("y")
        raise RuntimeError("a document failed")
    assert unpacking_folders(root) == []


def test_only_folders_of_gone_processes_on_this_host_are_removed(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = socket.gethostname()
    names = {
        "gone": f"{PREFIX}{int(gone.stdout)}@{host}.abc123",
        "alive": f"{PREFIX}{os.getpid()}@{host}.def456",
        "other host": f"{PREFIX}{int(gone.stdout)}@another-{host}.example.ghi789",
        "not ours": f"{PREFIX}notes",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "member.txt").write_text("x")
    assert remove_stale(tmp_path) == [names["gone"]]
    assert unpacking_folders(tmp_path) == sorted(n for k, n in names.items() if k != "gone")


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
    killed = subprocess.run(
        [sys.executable, "-c",
         "import os, signal, sys\nfrom pathlib import Path\nfrom kb.unpacking import unpacking_folder\n"
         "with unpacking_folder(Path(sys.argv[1])) as folder:\n"
         "    (folder / 'member.txt').write_text('half an archive')\n"
         "    os.kill(os.getpid(), signal.SIGKILL)\n",
         str(root)],
        cwd=REPO, capture_output=True, timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()
    assert len(unpacking_folders(root)) == 1
    assert main(["build", str(archive), "--kb", "zip", "--kb-root", str(root), "--embedding", "none", "-q"]) == 0
    assert unpacking_folders(root) == []
