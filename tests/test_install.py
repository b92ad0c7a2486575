"""The README's two commands, ingest/install.py's torch choice, and .ci/run installing as the README says."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
# A plain script (it runs before glmkb's dependencies exist), loaded from its file.
_SPEC = importlib.util.spec_from_file_location("glmkb_install", REPO / "ingest" / "install.py")
assert _SPEC is not None and _SPEC.loader is not None
install = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(install)


def readme_commands() -> list[str]:
    """The bash commands of the README's first two code blocks."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(encoding="utf-8"), re.S)
    return [block.strip() for block in blocks[:2]]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    """Bug: .ci/run pinned a different torch than the README told users to install."""
    first, tests = readme_commands()
    assert first.startswith("python ingest/install.py && ")
    assert tests == "python ingest/install.py dev && python -m pytest -n auto"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines()
    assert "torch" not in "".join(line for line in ci.splitlines() if not line.lstrip().startswith("#"))


def test_the_script_runs_on_the_standard_library_alone() -> None:
    """It runs before any dependency is installed: no site-packages, no glmkb import."""
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(REPO / "ingest" / "install.py"), "dev", "--gpu", "--dry-run"],
        capture_output=True, text=True, check=False, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().endswith(f"-m pip install -e {REPO}[dev]")


def test_without_a_gpu_the_newest_cpu_build_is_pinned(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bug: on a CPU machine PyPI's torch brought torch+cu130 and the nvidia-* packages (6.3 GB)."""
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(install, "cpu_index_reachable", lambda: True)
    seen: list[list[str]] = []

    def fake_run(command: list[str], **kwargs: Any) -> SimpleNamespace:
        seen.append(command)
        return SimpleNamespace(returncode=0, stdout="torch (2.9.1)\nAvailable versions: 2.9.1, 2.9.1+cpu, 2.10.0+cpu, 2.8.0+cpu\n")

    monkeypatch.setattr(install.subprocess, "run", fake_run)
    command = install.pip_command(["dev"], cpu=True)
    assert command[-3:] == ["torch==2.10.0+cpu", "--extra-index-url", install.CPU_INDEX]
    assert seen[0][-2:] == ["--extra-index-url", install.CPU_INDEX]
    assert install.pip_command([], cpu=False)[-2:] == ["-e", str(REPO)]


def test_an_unreachable_cpu_index_falls_back_to_what_pip_is_configured_with(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(install, "cpu_index_reachable", lambda: False)
    output = {"stdout": "Available versions: 2.14.1, 2.13.0+cpu, 2.13.0\n"}
    monkeypatch.setattr(install.subprocess, "run", lambda command, **kw: SimpleNamespace(returncode=0, **output))
    assert install.pip_command([], cpu=True)[-1] == "torch==2.13.0+cpu"  # e.g. a local wheel folder
    output["stdout"] = "Available versions: 2.14.1, 2.13.0\n"
    assert install.pip_command([], cpu=True)[-2:] == ["-e", str(REPO)]
    assert "no CPU-only torch build found" in capsys.readouterr().err


def test_auto_workers_follow_the_cores_and_stay_off_beside_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's ``-n auto``: one worker per core up to four; none where nvidia-smi is found,
    since the GPU tests measure the GPU's memory and time alone."""
    from tests import conftest

    monkeypatch.setattr(conftest.shutil, "which", lambda name: None)
    for cores, workers in ((1, 1), (2, 2), (16, conftest.MAX_WORKERS)):
        monkeypatch.setattr(conftest.os, "sched_getaffinity", lambda pid, n=cores: set(range(n)), raising=False)
        assert conftest.pytest_xdist_auto_num_workers(None) == workers  # type: ignore[arg-type]
    monkeypatch.setattr(conftest.shutil, "which", lambda name: "/usr/bin/nvidia-smi" if name == "nvidia-smi" else None)
    assert conftest.pytest_xdist_auto_num_workers(None) == 0  # type: ignore[arg-type]
