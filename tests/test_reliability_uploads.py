"""Gradio's own upload route is bounded at the edge, in ``glmkb-web`` and in ``glmkb serve``.

Issue 20 #11: ``/gradio_api/upload`` stored 200 MB in ~1 s and 1,000 files in one request
before any glmkb handler ran; only ``max_file_size`` bounded each file. ``app.web.upload_guard``
now refuses a request with more than ``ui.max_upload_files`` files, or a declared size more
than they may hold, before Gradio parses it. Real servers on loopback, raw HTTP.
"""

from __future__ import annotations

import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.services import Services
from configs import Settings
from tests.helpers import free_port, served

pytest.importorskip("gradio")
from gradio.utils import get_upload_folder  # noqa: E402

MAX_FILES = 3
TEXT = "刘备、关羽、张飞在桃园结为兄弟。\n".encode() * 10


def settings_for(kb_root: Path) -> Settings:
    return Settings(kb_root=kb_root, embedding={"model": "none"}, retrieval={"mode": "bm25"},
                    ui={"port": free_port(), "max_upload_files": MAX_FILES, "max_upload_mb": 1})


@contextlib.contextmanager
def web(kb_root: Path) -> Iterator[str]:
    """``glmkb-web``: the page launched by ``app.web.server.launch``."""
    from app.web.server import launch
    from app.web.ui import build_ui

    services = Services(settings_for(kb_root))
    demo = build_ui(services)
    launch(demo, services.settings, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{services.settings.ui.port}"
    finally:
        demo.close()


@contextlib.contextmanager
def serve(kb_root: Path) -> Iterator[str]:
    """``glmkb serve``: the page mounted on the API app (``app.serve.create_server_app``)."""
    from app.serve import create_server_app, served_settings

    settings = served_settings(settings_for(kb_root))
    with served(create_server_app(Services(settings)), port=settings.ui.port) as url:
        yield url


@pytest.fixture(scope="module", params=["glmkb-web", "glmkb serve"])
def base(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    start = web if request.param == "glmkb-web" else serve
    with start(tmp_path_factory.mktemp("kb")) as url:
        yield url


def stored(names: list[str]) -> list[Path]:
    """Files by these names anywhere in Gradio's upload folder."""
    root = Path(get_upload_folder())
    return [p for name in names for p in root.rglob(name)] if root.is_dir() else []


def post_files(base: str, names: list[str], *, data: bytes = TEXT) -> httpx.Response:
    files = [("files", (name, data, "text/plain")) for name in names]
    return httpx.post(f"{base}/gradio_api/upload", files=files, timeout=60)


def names(count: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    return [f"up-{tag}-{i}.txt" for i in range(count)]


def test_an_upload_within_the_limits_is_stored(base: str) -> None:
    """The limit is ``ui.max_upload_files``: that many files in one request still upload."""
    sent = names(MAX_FILES)
    response = post_files(base, sent)
    assert response.status_code == 200, response.text
    assert sorted(Path(p).name for p in response.json()) == sorted(sent)
    assert len(stored(sent)) == MAX_FILES


@pytest.mark.parametrize("count", [MAX_FILES + 1, 1000])
def test_a_request_with_too_many_files_is_refused_and_nothing_is_kept(base: str, count: int) -> None:
    """Regression (#20.11): one request carried 1,000 files into Gradio's upload folder."""
    sent = names(count)
    started = time.perf_counter()
    response = post_files(base, sent)
    assert response.status_code == 413, response.text
    assert f"一次最多上传 {MAX_FILES} 个文件" in response.text and "ui.max_upload_files" in response.text
    assert time.perf_counter() - started < 30
    assert stored(sent) == [], "files of a refused request are deleted"


def test_a_file_over_the_size_limit_is_refused(base: str) -> None:
    """``ui.max_upload_mb`` through Gradio's own ``max_file_size``."""
    sent = names(1)
    response = post_files(base, sent, data=b"x" * (1024 * 1024 + 1))
    assert response.status_code == 413 and "maximum allowed size" in response.text, response.text
    assert stored(sent) == []


def raw_request(base: str, head: str, body: bytes = b"") -> str:
    """Send ``head`` (and ``body``) on a raw socket; the status line and body of the answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(head.encode("latin-1") + body)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
    return answer.decode("utf-8", "replace")


def test_a_declared_size_over_the_limit_is_refused_on_the_headers(base: str) -> None:
    """Regression (#20.11: 200 MB stored in ~1 s): a declared 200 MB is a 413 before any of
    the body is sent (the server answers on the headers alone)."""
    head = ("POST /gradio_api/upload HTTP/1.1\r\nHost: localhost\r\n"
            "Content-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {200 * 2**20}\r\nConnection: close\r\n\r\n")
    answer = raw_request(base, head)
    assert answer.startswith("HTTP/1.1 413") and "upload too large" in answer, answer[:300]


def test_a_large_json_body_is_refused_before_the_login(base: str) -> None:
    """Bug guarded: Gradio's routes read and parse a whole JSON body before their login check, and only
    ``/v1`` had a body limit: an unauthenticated 100 MB POST to ``/gradio_api/queue/join`` took ~550 MiB
    (``glmkb-web``) or ~370 MiB (``glmkb serve``) before its 401. Past ``api.max_body_bytes`` it is a 413
    on the headers alone."""
    head = ("POST /gradio_api/queue/join HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            f"Content-Length: {100 * 2**20}\r\nConnection: close\r\n\r\n")
    answer = raw_request(base, head)
    assert answer.startswith("HTTP/1.1 413") and "api.max_body_bytes" in answer, answer[:300]


def test_a_chunked_body_over_the_limit_is_refused_while_it_streams(base: str) -> None:
    """No ``Content-Length``: the guard counts the bytes (a huge form field, which
    ``max_file_size`` does not bound)."""
    boundary = "bnd"
    chunk = b"y" * 2**20

    def body() -> Iterator[bytes]:
        yield f'--{boundary}\r\nContent-Disposition: form-data; name="data"\r\n\r\n'.encode()
        for _ in range(8):
            yield chunk
        yield f"\r\n--{boundary}--\r\n".encode()

    with contextlib.suppress(httpx.WriteError, httpx.RemoteProtocolError):
        response = httpx.post(f"{base}/gradio_api/upload", content=body(), timeout=60,
                              headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413 and "upload too large" in response.text, response.text
