"""DNS-rebinding guard: a server on a loopback address answers only requests naming a loopback host.

Bug guarded: ``glmkb-api``, ``glmkb-web`` and ``glmkb serve`` listen on 127.0.0.1 without a key or
login by default, and answered any ``Host``; a web page whose name its owner points at 127.0.0.1
(DNS rebinding) could then read answers and documents from the user's browser. Each front end's
start-up passes the address it listens on to ``RequestGuard`` (``served_on``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.guard import is_loopback_host
from app.services import Services
from configs import Settings


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1:8000", True), ("localhost", True), ("LOCALHOST:7860", True), ("[::1]:8000", True),
    ("127.8.0.1", True), ("evil.example", False), ("evil.example:8000", False), ("0.0.0.0", False),
    ("192.168.1.5:8000", False), ("", False),
])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback


def _client(tmp_path: Path, *, served_on: str | None, **api: Any) -> FastAPI:
    settings = Settings(kb_root=tmp_path, embedding={"model": "none"}, api=api)
    return create_app(Services(settings), served_on=served_on)


def test_a_loopback_server_refuses_other_hosts(tmp_path: Path) -> None:
    app = _client(tmp_path, served_on="127.0.0.1")
    refused = TestClient(app, base_url="http://evil.example").get("/health")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "host_not_allowed"
    assert "api.allowed_hosts" in refused.json()["error"]["message"]
    assert TestClient(app, base_url="http://evil.example").get("/v1/models").status_code == 403
    for base in ("http://127.0.0.1:8000", "http://localhost:8000", "http://[::1]:8000"):
        assert TestClient(app, base_url=base).get("/health").status_code == 200, base


def test_allowed_hosts_and_network_servers(tmp_path: Path) -> None:
    """A reverse proxy's host named in ``api.allowed_hosts`` is answered; a server on the network's
    address (its own key or login guard it) and an app built without ``served_on`` check no Host."""
    proxied = _client(tmp_path, served_on="127.0.0.1", allowed_hosts=["kb.example.com"])
    assert TestClient(proxied, base_url="https://kb.example.com").get("/health").status_code == 200
    assert TestClient(proxied, base_url="https://evil.example").get("/health").status_code == 403
    for served_on in ("0.0.0.0", None):
        assert TestClient(_client(tmp_path, served_on=served_on), base_url="http://any.example").get(
            "/health").status_code == 200


def test_each_front_end_passes_its_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``glmkb-api`` and ``glmkb serve`` build their apps with the address they listen on, and the
    web UI's guard gets ``ui.host`` (``glmkb-web``)."""
    import uvicorn

    import gradio as gr

    from app import serve as serve_module
    from app.api import cli as api_cli
    from app.web import server as web_server

    served: list[Any] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.append(app))
    monkeypatch.setattr(Services, "warm_up", lambda self: None)
    settings = Settings(kb_root=tmp_path, embedding={"model": "none"})
    api_cli.serve(settings)
    serve_module.serve(settings)
    for app in served:
        assert TestClient(app, base_url="http://evil.example").get("/health").status_code == 403
        assert TestClient(app, base_url="http://127.0.0.1").get("/health").status_code == 200
    launched: dict[str, Any] = {}
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.update(kwargs))
    web_server.launch(gr.Blocks(), Settings(kb_root=tmp_path, api={"allowed_hosts": ["a.example"]}))
    guard = launched["app_kwargs"]["middleware"][0]
    assert guard.kwargs["served_on"] == "127.0.0.1" and guard.kwargs["allowed_hosts"] == ["a.example"]
