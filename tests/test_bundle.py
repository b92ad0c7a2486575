"""glmkb bundle: wheels from a local wheelhouse, scripts, checksums, install.sh refusals.

No network: every pip call gets ``--no-index --find-links`` to a folder of tiny fake wheels
built here, so the bundle logic runs in seconds. The real wheel set is tests/test_bundle_e2e.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.bundle import BundleError, Target, build_bundle, make_target
from app.bundle.cli import bundle as bundle_cli
from app.bundle.target import compatible_platforms, wheel_glibc
from app.bundle.wheels import wheel_info


def fake_wheel(
    folder: Path,
    name: str,
    version: str = "1.0",
    *,
    requires: tuple[str, ...] = (),
    licence: dict[str, str] | None = None,
    tag: str = "py3-none-any",
) -> Path:
    """A minimal valid wheel: one module, METADATA (with ``licence`` headers), WHEEL, RECORD."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{name}-{version}.dist-info"
    headers = {"Metadata-Version": "2.1", "Name": name, "Version": version, **(licence or {})}
    meta = "".join(f"{k}: {v}\n" for k, v in headers.items()) + "".join(f"Requires-Dist: {r}\n" for r in requires)
    files = {
        f"{name}.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": meta,
        f"{dist}/WHEEL": f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n",
    }
    record = []
    path = folder / f"{name}-{version}-{tag}.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for rel, text in files.items():
            data = text.encode()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            record.append(f"{rel},sha256={digest},{len(data)}")
            zf.writestr(rel, data)
        zf.writestr(f"{dist}/RECORD", "\n".join([*record, f"{dist}/RECORD,,"]) + "\n")
    return path


@pytest.fixture(autouse=True)
def _own_pip_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """pip sees only the test's wheelhouse: no machine pip.conf, no PIP_FIND_LINKS."""
    for name in [n for n in os.environ if n.startswith("PIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


@pytest.fixture
def wheelhouse(tmp_path: Path) -> Path:
    """glmkb 0.1.0 (fake) needing ``fakedep``, which needs ``fakeleaf``; one unrelated wheel."""
    house = tmp_path / "house"
    fake_wheel(house, "fakedep", "2.0", requires=("fakeleaf>=1",), licence={"License-Expression": "MIT"})
    fake_wheel(house, "fakeleaf", "1.5", licence={"Classifier": "License :: OSI Approved :: BSD License"})
    fake_wheel(house, "unrelated", "9.9")
    return house


@pytest.fixture
def fake_glmkb(tmp_path: Path) -> Path:
    return fake_wheel(tmp_path / "own", "glmkb", "0.1.0", requires=("fakedep",), licence={"License": "Apache-2.0"})


def make_bundle(out: Path, wheelhouse: Path, fake_glmkb: Path, *, target: Target | None = None, **kwargs) -> Path:
    build_bundle(
        out,
        target=target or Target(),
        kb_root=out.parent / "no-kbs",
        find_links=[wheelhouse],
        no_index=True,
        project_wheel=fake_glmkb,
        **kwargs,
    )
    return out


def test_bundle_holds_the_dependency_closure_and_its_licences(tmp_path: Path, wheelhouse: Path, fake_glmkb: Path) -> None:
    out = make_bundle(tmp_path / "b", wheelhouse, fake_glmkb)
    names = sorted(p.name.split("-")[0] for p in (out / "wheels").glob("*.whl"))
    assert names == ["fakedep", "fakeleaf", "glmkb"]  # not "unrelated"
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "| fakedep | 2.0 | MIT |" in readme
    assert "| fakeleaf | 1.5 | BSD License |" in readme
    assert "| glmkb | 0.1.0 | Apache-2.0 |" in readme
    sums = (out / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ", 1)[1] for line in sums}
    assert {"install.sh", "run.sh", "Dockerfile", "config.yaml", "README.md", "bundle.json"} <= listed
    assert "SHA256SUMS" not in listed
    assert subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out).returncode == 0
    install = (out / "install.sh").read_text()
    assert 'REQUIREMENT="glmkb==0.1.0"' in install and "{{" not in install
    assert os.access(out / "run.sh", os.X_OK)
    config = (out / "config.yaml").read_text()
    assert "kb_root: kb" in config and "model: none" in config


def test_models_are_copied_under_their_folder_names_with_card_licences(
    tmp_path: Path, wheelhouse: Path, fake_glmkb: Path
) -> None:
    chat = tmp_path / "src" / "chatglm3-6b"
    chat.mkdir(parents=True)
    (chat / "config.json").write_text("{}")
    (chat / "model-00001-of-00001.safetensors").write_bytes(b"w")
    (chat / "pytorch_model-00001-of-00001.bin").write_bytes(b"w")  # the same weights again
    (chat / "README.md").write_text("---\nlicense: other\nlicense_name: chatglm3-6b-license\n---\n# ChatGLM3\n")
    embed = tmp_path / "src" / "text2vec"
    embed.mkdir()
    (embed / "LICENSE").write_text("Apache License\nVersion 2.0\n")
    (embed / "model.safetensors").write_bytes(b"x" * 10)
    (embed / "link.bin").symlink_to(embed / "model.safetensors")
    out = make_bundle(tmp_path / "b", wheelhouse, fake_glmkb, model_path=str(chat), embedding=str(embed))
    assert (out / "models/chatglm3-6b/config.json").is_file()
    assert sorted(p.name for p in (out / "models/chatglm3-6b").glob("*model*")) == ["model-00001-of-00001.safetensors"]
    assert not (out / "models/text2vec/link.bin").is_symlink()  # real files, not links into this machine
    config = (out / "config.yaml").read_text()
    assert "model_path: models/chatglm3-6b" in config and "model: models/text2vec" in config
    readme = (out / "README.md").read_text()
    assert "other (chatglm3-6b-license)" in readme and "Apache License (file LICENSE)" in readme


def test_an_unreachable_hub_id_fails_in_one_line(tmp_path: Path, wheelhouse: Path, fake_glmkb: Path) -> None:
    from app.bundle import DownloadError

    with pytest.raises(DownloadError, match="could not download THUDM/no-such-model"):
        make_bundle(tmp_path / "b", wheelhouse, fake_glmkb, model_path="THUDM/no-such-model")


def test_target_flags_and_platform_tags() -> None:
    tags = compatible_platforms("manylinux_2_28_x86_64")
    assert tags[0] == "manylinux_2_28_x86_64" and "manylinux_2_17_x86_64" in tags and "manylinux2014_x86_64" in tags
    assert "manylinux_2_29_x86_64" not in tags
    assert wheel_glibc("manylinux2014_x86_64") == (2, 17) and wheel_glibc("any") is None
    target = make_target(python="3.11", platform="manylinux_2_28_x86_64", torch="cu124")
    args = target.pip_args()
    assert args[:4] == ["--python-version", "3.11", "--implementation", "cp"] and args[-2:] == ["--only-binary", ":all:"]
    assert target.arch == "x86_64" and target.torch_index() == "https://download.pytorch.org/whl/cu124"
    for bad in ({"python": "3"}, {"platform": "many linux"}, {"torch": "cuda12"}):
        with pytest.raises(BundleError):
            make_target(**{"python": None, "platform": None, "torch": None, **bad})


def test_a_dependency_missing_from_the_wheelhouse_is_named(tmp_path: Path, fake_glmkb: Path) -> None:
    from app.bundle import DownloadError

    house = tmp_path / "empty-house"
    house.mkdir()
    with pytest.raises(DownloadError, match="no wheel of fakedep"):
        make_bundle(tmp_path / "b", house, fake_glmkb)


def test_wheel_licence_falls_back_to_classifiers_then_unknown(tmp_path: Path) -> None:
    long = {"License": "Copyright (c) someone\n\nPermission is hereby granted..."}
    assert wheel_info(fake_wheel(tmp_path, "a", licence=long)).licence.startswith("Copyright (c) someone")
    assert wheel_info(fake_wheel(tmp_path, "b")).licence.startswith("unknown")


# ----------------------------------------------------------------------------- install.sh


def run_install(out: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "PYTHON": sys.executable, **env}
    return subprocess.run(["./install.sh"], cwd=out, env=full, capture_output=True, text=True, timeout=300)


def test_install_refuses_a_python_the_wheels_are_not_for(tmp_path: Path, wheelhouse: Path, fake_glmkb: Path) -> None:
    out = make_bundle(tmp_path / "b", wheelhouse, fake_glmkb, target=make_target(python="3.10", platform=None, torch=None))
    proc = run_install(out)
    assert proc.returncode == 1
    assert "the wheels are for Python 3.10" in proc.stderr and not (out / ".venv").exists()


def test_install_refuses_missing_or_corrupt_files(tmp_path: Path, wheelhouse: Path, fake_glmkb: Path) -> None:
    out = make_bundle(tmp_path / "b", wheelhouse, fake_glmkb)
    wheel = next((out / "wheels").glob("fakedep-*.whl"))
    wheel.write_bytes(wheel.read_bytes()[:-10])
    proc = run_install(out)
    assert proc.returncode == 1 and "damaged files" in proc.stderr and wheel.name in proc.stderr
    wheel.unlink()
    proc = run_install(out)
    assert proc.returncode == 1 and wheel.name in proc.stderr and not (out / ".venv").exists()


def test_install_refuses_when_the_disk_lacks_room(
    tmp_path: Path, wheelhouse: Path, fake_glmkb: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.bundle.build.INSTALL_MARGIN", 1e12)
    out = make_bundle(tmp_path / "b", wheelhouse, fake_glmkb)
    proc = run_install(out)
    assert proc.returncode == 1 and "not enough disk space" in proc.stderr


def test_install_is_rerunnable_and_uses_only_the_wheels(tmp_path: Path, wheelhouse: Path, fake_glmkb: Path) -> None:
    out = make_bundle(tmp_path / "b", wheelhouse, fake_glmkb)
    # Any index pip tried would be this dead proxy; --no-index means it never tries.
    dead = {"PIP_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_FIND_LINKS": "/nonexistent", "https_proxy": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9"}
    for _ in range(2):
        proc = run_install(out, **dead)
        assert proc.returncode == 0, proc.stderr
    python = out / ".venv/bin/python"
    code = "import fakedep, fakeleaf, glmkb; print(fakedep.VERSION)"
    assert subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip() == "2.0"
    proc = subprocess.run(["./run.sh", "--help"], cwd=out, capture_output=True, text=True)
    assert proc.returncode == 0 and "--check" in proc.stdout


# ----------------------------------------------------------------------------- CLI


def test_cli_builds_and_verifies(tmp_path: Path, wheelhouse: Path, fake_glmkb: Path) -> None:
    out = tmp_path / "b"
    runner = CliRunner()
    args = [str(out), "--no-index", "--find-links", str(wheelhouse), "--glmkb-wheel", str(fake_glmkb), "--torch", "cpu"]
    # --torch cpu needs a +cpu torch wheel; the wheelhouse has none: one line, exit 3.
    result = runner.invoke(bundle_cli, args)
    assert result.exit_code != 0 and "torch" in result.output
    result = runner.invoke(bundle_cli, [*args[:-1], "default", "--kb-root", str(tmp_path / "kbs")])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "bundle.json").read_text())["target"]["torch"] is None
    result = runner.invoke(bundle_cli, ["verify", str(out)])
    assert result.exit_code == 0 and "bundle intact" in result.output
    (out / "config.yaml").write_text("kb_root: /elsewhere\n")
    result = runner.invoke(bundle_cli, ["verify", str(out)])
    assert result.exit_code == 1 and "config.yaml: checksum mismatch" in result.output
    result = runner.invoke(bundle_cli, ["verify", str(tmp_path)])
    assert result.exit_code == 2 and "not a glmkb bundle" in result.output


def test_out_must_be_new_or_a_bundle(tmp_path: Path, wheelhouse: Path, fake_glmkb: Path) -> None:
    out = tmp_path / "b"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not a glmkb bundle"):
        make_bundle(out, wheelhouse, fake_glmkb)
    assert (out / "precious.txt").exists()


def test_cli_bundles_several_knowledge_bases_after_one_kb_flag(tmp_path: Path, wheelhouse: Path, fake_glmkb: Path) -> None:
    from kb import KnowledgeBase

    root = tmp_path / "kbs"
    for name, text in {"三国": "桃园三结义", "xiyou": "大闹天宫"}.items():
        kb = KnowledgeBase(root, name, create=True, embedding_model="none")
        kb.add_texts({f"{name}.txt": text})
        kb.close()
    out = tmp_path / "b"
    args = [str(out), "--no-index", "--find-links", str(wheelhouse), "--glmkb-wheel", str(fake_glmkb),
            "--torch", "default", "--kb-root", str(root), "--split", "64K", "--kb", "三国", "xiyou"]
    result = CliRunner().invoke(bundle_cli, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "kb").iterdir()) == ["xiyou", "三国"]
    assert "kb_name: 三国" in (out / "config.yaml").read_text(encoding="utf-8")
    assert json.loads((out / "bundle.json").read_text())["knowledge_bases"].keys() == {"三国", "xiyou"}
    assert (tmp_path / "b-volumes" / "join.sh").is_file()
    result = CliRunner().invoke(bundle_cli, [*args[:-2], "missing"])
    assert result.exit_code == 2 and "no knowledge base 'missing'" in result.output
