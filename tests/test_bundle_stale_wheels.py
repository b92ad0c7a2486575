"""A bundle rebuilt in place keeps only the wheels the new build resolved in wheels/.

Same setup as tests/test_bundle.py (its fake wheels and fixtures, pip offline with
``--no-index --find-links``); a rebuild changes what the wheelhouse offers between builds.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from app.bundle import Target, build_bundle
from app.bundle import wheels as bundle_wheels
from app.bundle.build import BundleResult
from app.bundle.wheels import reported_wheels
from tests import test_bundle
from tests.test_bundle import fake_wheel

# tests/test_bundle.py's fixtures, by name here too (the autouse one keeps pip off this machine's config).
_own_pip_config = test_bundle._own_pip_config
wheelhouse = test_bundle.wheelhouse
fake_glmkb = test_bundle.fake_glmkb


def rebuild(out: Path, glmkb: Path, *find_links: Path, target: Target | None = None) -> BundleResult:
    """A bundle of ``glmkb`` in ``out`` (the same folder each time, so wheels/ is reused)."""
    return build_bundle(out, target=target or Target(), kb_root=out.parent / "no-kbs", find_links=list(find_links),
                        no_index=True, project_wheel=glmkb)


def wheel_files(out: Path) -> list[str]:
    return sorted(p.name for p in (out / "wheels").glob("*.whl"))


def test_a_rebuild_drops_an_older_version_and_a_dropped_dependency(
    tmp_path: Path, wheelhouse: Path, fake_glmkb: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Bug: a rebuilt bundle kept stale dependency wheels: wheels/ is reused so pip skips what
    it has, and the build listed every wheel there, so fakedep 2.0 and fakeleaf (which fakedep
    3.0 no longer needs) stayed in the README, the size estimate, SHA256SUMS and the volumes."""
    out = tmp_path / "b"
    rebuild(out, fake_glmkb, wheelhouse)
    assert wheel_files(out) == ["fakedep-2.0-py3-none-any.whl", "fakeleaf-1.5-py3-none-any.whl",
                                "glmkb-0.1.0-py3-none-any.whl"]
    fake_wheel(wheelhouse, "fakedep", "3.0", licence={"License-Expression": "MIT"})  # no longer needs fakeleaf
    with caplog.at_level(logging.INFO, logger="app.bundle.build"):
        result = rebuild(out, fake_glmkb, wheelhouse)
    assert wheel_files(out) == ["fakedep-3.0-py3-none-any.whl", "glmkb-0.1.0-py3-none-any.whl"]
    assert sorted((w.name, w.version) for w in result.wheels) == [("fakedep", "3.0"), ("glmkb", "0.1.0")]
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "| fakedep | 3.0 | MIT |" in readme and "| fakedep | 2.0 |" not in readme and "fakeleaf" not in readme
    assert "fakeleaf" not in (out / "SHA256SUMS").read_text()
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out).returncode == 0
    removed = sorted(r.getMessage() for r in caplog.records if r.getMessage().startswith("removing "))
    assert [m.split()[1].rstrip(",") for m in removed] == ["fakedep-2.0-py3-none-any.whl",
                                                           "fakeleaf-1.5-py3-none-any.whl"]


def test_wheels_pip_took_from_the_reused_folder_are_kept(tmp_path: Path, wheelhouse: Path, fake_glmkb: Path) -> None:
    """A rebuild with no wheelhouse at all resolves everything from wheels/ itself ("File was
    already downloaded"): each of those is still needed and stays; only a stray one goes."""
    out = tmp_path / "b"
    rebuild(out, fake_glmkb, wheelhouse)
    before = wheel_files(out)
    fake_wheel(out / "wheels", "unrelated", "9.9")
    result = rebuild(out, fake_glmkb)
    assert wheel_files(out) == before
    assert sorted(w.file for w in result.wheels) == before


def test_the_target_torch_wheel_is_kept_and_an_older_one_dropped(
    tmp_path: Path, wheelhouse: Path, fake_glmkb: Path
) -> None:
    """torch of the target's build is kept even where glmkb's requirements do not pull it in,
    and a rebuild that finds a newer torch drops the earlier build's."""
    out = tmp_path / "b"
    fake_wheel(wheelhouse, "torch", "2.5.0+cpu")
    rebuild(out, fake_glmkb, wheelhouse, target=Target(torch="cpu"))
    assert "torch-2.5.0+cpu-py3-none-any.whl" in wheel_files(out)
    fake_wheel(wheelhouse, "torch", "2.5.1+cpu")
    result = rebuild(out, fake_glmkb, wheelhouse, target=Target(torch="cpu"))
    assert [f for f in wheel_files(out) if f.startswith("torch-")] == ["torch-2.5.1+cpu-py3-none-any.whl"]
    assert ("torch", "2.5.1+cpu") in {(w.name, w.version) for w in result.wheels}


def test_a_source_built_wheel_survives_a_rebuild(tmp_path: Path) -> None:
    """The wheel build_pure_wheel made from an sdist is what pip resolves on the next build
    (from wheels/), so it is kept; once glmkb needs a newer one, the earlier one goes."""
    import importlib.metadata as md

    from tests.test_bundle import fake_sdist
    from tests.test_bundle_e2e import repack

    house, tools = tmp_path / "house", tmp_path / "tools"
    house.mkdir()
    tools.mkdir()
    fake_sdist(house, "srconly", "0.4")
    repack(md.distribution("setuptools"), tools)  # the isolated build's backend, offline
    own = fake_wheel(tmp_path / "own", "glmkb", "0.1.0", requires=("srconly>=0.4",))
    out = tmp_path / "b"
    rebuild(out, own, house, tools)
    rebuild(out, own, house, tools)
    assert wheel_files(out) == ["glmkb-0.1.0-py3-none-any.whl", "srconly-0.4-py3-none-any.whl"]
    fake_sdist(house, "srconly", "0.5")
    rebuild(out, fake_wheel(tmp_path / "own2", "glmkb", "0.1.0", requires=("srconly>=0.5",)), house, tools)
    assert wheel_files(out) == ["glmkb-0.1.0-py3-none-any.whl", "srconly-0.5-py3-none-any.whl"]


def test_nothing_is_deleted_when_pips_output_does_not_say_what_it_used(
    tmp_path: Path, wheelhouse: Path, fake_glmkb: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """pip run quiet (a pip.conf) or wording its lines otherwise: every wheel is kept (and
    listed, as before) rather than one this build needs deleted."""
    out = tmp_path / "b"
    rebuild(out, fake_glmkb, wheelhouse)
    fake_wheel(wheelhouse, "fakedep", "3.0")
    real_run_pip = bundle_wheels.run_pip

    def quiet_pip(args: list[str], *, what: str) -> subprocess.CompletedProcess[str]:
        proc = real_run_pip(args, what=what)
        proc.stdout = ""
        return proc

    monkeypatch.setattr(bundle_wheels, "run_pip", quiet_pip)
    with caplog.at_level(logging.WARNING):
        result = rebuild(out, fake_glmkb, wheelhouse)
    assert wheel_files(out) == ["fakedep-2.0-py3-none-any.whl", "fakedep-3.0-py3-none-any.whl",
                                "fakeleaf-1.5-py3-none-any.whl", "glmkb-0.1.0-py3-none-any.whl"]
    assert len(result.wheels) == 4
    assert any("keeping every wheel" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("output", [
    "",  # --quiet
    "Saved ./wheels/a-1.0-py3-none-any.whl\n",  # no "Successfully downloaded" line
    "Saved ./wheels/a-1.0-py3-none-any.whl\nSuccessfully downloaded a b\n",  # b's file not named
    "Stored /x/wheels/a-1.0-py3-none-any.whl\nSuccessfully downloaded a\n",  # another wording
])
def test_output_that_does_not_account_for_every_project_gives_none(tmp_path: Path, output: str) -> None:
    fake_wheel(tmp_path / "wheels", "a", "1.0")
    assert reported_wheels(output, tmp_path / "wheels") is None


def test_reported_wheels_reads_both_line_kinds_and_normalizes_names(tmp_path: Path) -> None:
    """Relative "Saved" paths, absolute "already downloaded" ones, ``Zope.Interface`` named
    ``zope_interface`` in its file; a project tried while backtracking and then dropped is left out."""
    dest = tmp_path / "wheels"
    files = [fake_wheel(dest, name, "1.0") for name in ("zope_interface", "fakedep", "tried")]
    output = (
        f"  File was already downloaded {files[0]}\n"
        "Saved ./wheels/fakedep-1.0-py3-none-any.whl\n"
        f"  File was already downloaded {files[2]}\n"
        "Successfully downloaded Zope.Interface fakedep\n"
    )
    assert reported_wheels(output, dest) == {files[0], files[1]}
