"""End to end: build a real bundle (glmkb + every dependency + tiny models + a KB), install it
in a fresh venv inside a network namespace with no network (``unshare -n``: only loopback
exists), start ``run.sh api`` and answer a KB question through the API.

No index is reachable from tests, so the bundle's pip resolves from a local wheelhouse: the
wheels of this venv's installed distributions (glmkb's dependency closure), repacked once into
a cache folder (``GLMKB_TEST_WHEELHOUSE``, default ~/.cache/glmkb-tests/wheelhouse-pyXY) and
reused by later runs. Where ``unshare -n`` is not permitted the same runs with pip's index,
find-links and proxies pointed at a dead loopback port instead; the test says which ran.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import importlib.metadata as md
import io
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.helpers import clean_env, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KB_NAME = "sanguo"


def dependency_closure(requirements: list[str]) -> list[md.Distribution]:
    """The installed distributions ``requirements`` pull in (markers and extras evaluated)."""
    extras_done: dict[str, set[str]] = {}
    dists: dict[str, md.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        key = canonicalize_name(req.name)
        if key in extras_done and set(req.extras) <= extras_done[key]:
            continue
        extras_done[key] = extras_done.get(key, set()) | set(req.extras)
        dist = dists.setdefault(key, md.distribution(req.name))
        for text in dist.requires or []:
            sub = Requirement(text)
            if sub.marker is None or any(sub.marker.evaluate({"extra": e}) for e in ["", *extras_done[key]]):
                todo.append(Requirement(sub.name + (f"[{','.join(sorted(sub.extras))}]" if sub.extras else "")))
    return list(dists.values())


def repack(dist: md.Distribution, dest: Path) -> Path:
    """An installed distribution written back as a wheel (files from its RECORD, uncompressed:
    the copy is about speed, not size)."""
    wheel_text = dist.read_text("WHEEL") or "Tag: py3-none-any\n"
    tags = [line.split(":", 1)[1].strip().split("-") for line in wheel_text.splitlines() if line.startswith("Tag:")]
    tag = "-".join(".".join(dict.fromkeys(t[i] for t in tags)) for i in range(3))  # py2.py3-none-any
    name = re.sub(r"[-_.]+", "_", dist.metadata["Name"]).lower()
    path = dest / f"{name}-{dist.version}-{tag}.whl"
    if path.exists():
        return path
    base = Path(dist.locate_file(""))
    rows = []
    tmp = path.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        record_name = None
        for rel in dist.files or []:
            rel_s = str(rel)
            if rel_s.startswith("..") or "__pycache__" in rel_s or rel_s.endswith(".pyc"):
                continue
            if rel_s.endswith(".dist-info/RECORD") and rel_s.count("/") == 1:  # not a vendored one
                record_name = rel_s
                continue
            file = base / rel_s
            if not file.is_file():
                continue
            data = file.read_bytes()
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
            rows.append([rel_s, f"sha256={digest}", str(len(data))])
            zf.writestr(rel_s, data)
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows([*rows, [record_name, "", ""]])
        zf.writestr(record_name, out.getvalue())
    tmp.rename(path)
    return path


@pytest.fixture(scope="module")
def wheelhouse() -> Path:
    """Local wheels of glmkb's whole dependency closure, from this venv (cached)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    default = Path.home() / ".cache" / "glmkb-tests" / f"wheelhouse-py{sys.version_info.major}{sys.version_info.minor}"
    dest = Path(os.environ.get("GLMKB_TEST_WHEELHOUSE", default))
    dest.mkdir(parents=True, exist_ok=True)
    try:
        dists = dependency_closure(project["dependencies"])
    except md.PackageNotFoundError as e:
        pytest.skip(f"dependency {e} is not installed here, so its wheel cannot be made offline")
    for dist in dists:
        repack(dist, dest)
    return dest


@pytest.fixture(scope="module")
def small_kb(tmp_path_factory: pytest.TempPathFactory, tiny_embedding_path: Path) -> Path:
    """A dense (tiny embedding) knowledge base of two short texts; returns its kb_root."""
    from kb import KnowledgeBase

    root = tmp_path_factory.mktemp("kb_root")
    kb = KnowledgeBase(root, KB_NAME, create=True, embedding_model=str(tiny_embedding_path), device="cpu",
                       chunk_size=60, chunk_overlap=0)
    kb.add_texts({
        "taoyuan.txt": "第一回 宴桃园豪杰三结义\n刘备、关羽、张飞在桃园结为兄弟，誓同生死，共图大事。",
        "chibi.txt": "第四十九回 七星坛诸葛祭风\n周瑜用火攻，东风大起，曹操八十三万大军在赤壁被烧。",
    })
    kb.close()
    return root


def isolation() -> tuple[list[str], str]:
    """The prefix that cuts the network off, and its name for the report."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-n"], "unshare -n (network namespace with loopback only)"
    return [], "no namespace: PIP_NO_INDEX + index/find-links/proxies pointed at 127.0.0.1:9"


DRIVER = r"""
set -euo pipefail
ip link set lo up 2>/dev/null || true
echo "interfaces: $(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')"
cd "$BUNDLE"
SECONDS=0
./install.sh
install_s=$SECONDS
echo "install_seconds: $install_s"
./run.sh --check > check.txt 2>&1 || true
./run.sh api --port "$PORT" > server.log 2>&1 &
server=$!
for i in $(seq 900); do curl --noproxy "*" -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.2; done
echo "server_up_after: $(( SECONDS - install_s ))"
curl --noproxy "*" -s --max-time 300 -X POST "http://127.0.0.1:$PORT/v1/kb/$KB/query" -H 'content-type: application/json' \
  -d '{"query": "桃园结义的是谁", "k": 2, "mode": "bm25"}' > answer.json || true
curl --noproxy "*" -s --max-time 300 -X POST "http://127.0.0.1:$PORT/v1/kb/$KB/query" -H 'content-type: application/json' \
  -d '{"query": "赤壁", "k": 2, "mode": "hybrid"}' > hybrid.json || true
curl --noproxy "*" -s "https://pypi.org/simple/" -o /dev/null --max-time 5 && echo "outside: reachable" || echo "outside: unreachable"
echo "venv_mib: $(du -sm .venv | cut -f1) wheels_mib: $(du -sm wheels | cut -f1)"
kill $server; wait $server || true
"""


def test_bundle_installs_and_answers_offline(
    tmp_path: Path, wheelhouse: Path, small_kb: Path, tiny_glm_dir: Path, tiny_embedding_path: Path,
    record_property: pytest.RecordProperty,
) -> None:
    if not shutil.which("sha256sum") or not shutil.which("curl"):
        pytest.skip("needs sha256sum and curl")
    prefix, how = isolation()
    env = {k: v for k, v in clean_env().items() if not k.startswith("PIP_") and k != "VIRTUAL_ENV"}
    dead = "http://127.0.0.1:9"
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_INDEX_URL=f"{dead}/simple", http_proxy=dead, https_proxy=dead,
               HTTP_PROXY=dead, HTTPS_PROXY=dead, HF_HUB_OFFLINE="1")
    out = tmp_path / "glmkb-bundle"
    start = time.perf_counter()
    build = subprocess.run(
        [*prefix, sys.executable, "-m", "app.bundle.cli", str(out), "--no-index", "--find-links", str(wheelhouse),
         "--torch", "cpu", "--model-path", str(tiny_glm_dir), "--embedding", str(tiny_embedding_path),
         "--kb-root", str(small_kb), "--kb", KB_NAME],
        cwd=REPO, env={**env, "PYTHONPATH": str(REPO)}, capture_output=True, text=True, timeout=600,
    )
    build_seconds = time.perf_counter() - start
    assert build.returncode == 0, build.stderr[-3000:]
    port = free_port()
    base_python = getattr(sys, "_base_executable", sys.executable)
    run_env = {**env, "BUNDLE": str(out), "PORT": str(port), "KB": KB_NAME, "PYTHON": base_python}
    start = time.perf_counter()
    proc = subprocess.run([*prefix, "bash", "-c", DRIVER], env=run_env, capture_output=True, text=True, timeout=900)
    run_seconds = time.perf_counter() - start
    report = f"{how}; build {build_seconds:.0f} s ({build.stdout.strip().splitlines()[0]}); install+run {run_seconds:.0f} s"
    record_property("bundle_e2e", report)
    print(report, proc.stdout, sep="\n")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    if prefix:
        assert "interfaces: lo " in proc.stdout  # nothing but loopback existed
    assert "outside: unreachable" in proc.stdout
    answer = json.loads((out / "answer.json").read_text(encoding="utf-8") or '{"error": "no answer"}')
    assert answer.get("data"), f"{answer} {(out / 'server.log').read_text()[-3000:]} {(out / 'check.txt').read_text()}"
    assert "桃园" in answer["data"][0]["text"] and answer["data"][0]["source"] == "taoyuan.txt"
    hybrid = json.loads((out / "hybrid.json").read_text(encoding="utf-8") or "{}")
    assert hybrid.get("mode") == "hybrid" and len(hybrid["data"]) == 2  # the bundled embedding model ran
    check = (out / "check.txt").read_text()
    assert "ok  model" in check and f"ok  kb          {KB_NAME}: 2 documents" in check, check
