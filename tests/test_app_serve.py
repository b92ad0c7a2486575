"""``glmkb serve``: the web UI and the API in one process over one ``Services`` (one model load),
and the ``glmkb`` command's subcommands."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.glmkb_cli import SUBCOMMANDS, main
from app.serve import create_server_app, served_settings
from app.services import Services
from configs import Settings
from kb import KnowledgeBase
from tests.helpers import clean_env, free_port, served

pytest.importorskip("gradio")
from gradio_client import Client  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TEXT = "第一回 宴桃园豪杰三结义\n刘备、关羽、张飞在桃园结为兄弟，誓同生死。\n" * 20


def running(app: Any, port: int) -> contextlib.AbstractContextManager[str]:
    """``app`` served by uvicorn in a thread on 127.0.0.1:``port``; yields the base URL."""
    return served(app, port=port)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(
        kb_root=tmp_path,
        embedding={"model": "none"},
        retrieval={"mode": "bm25", "top_k": 2},
        llm={"max_input_tokens": 1024},
        ui={"port": free_port()},
    )
    KnowledgeBase.from_settings(settings, name="t", create=True).add_texts({"t.txt": TEXT})
    return served_settings(settings)


def test_serve_answers_the_page_and_the_api_from_one_model_load(settings: Settings, tiny_chatglm: Any) -> None:
    """One process, one ``Services``: a question in the page and a KB chat over the API both
    use the model loaded once (glmkb-web + glmkb-api used to load two copies)."""
    loads: list[int] = []

    def factory() -> Any:
        loads.append(1)
        return tiny_chatglm.model_copy(update={"max_new_tokens": 8})

    services = Services(settings, llm_factory=factory)
    with running(create_server_app(services), settings.ui.port) as base, httpx.Client(base_url=base, timeout=60) as c:
        assert c.get("/health").json() == {"status": "ok"}
        assert "<html" in c.get("/").text.lower()
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["glmkb"]
        body = {"messages": [{"role": "user", "content": "谁结义？"}], "max_tokens": 4}
        answer = c.post("/v1/kb/t/chat/completions", json=body)
        assert answer.status_code == 200, answer.text
        page = Client(f"{base}/", verbose=False)
        chat = page.predict("谁结义？", "t", "bm25", 2, api_name="/ask")[1]
        assert any(m["role"] == "assistant" for m in chat)
        assert [kb["name"] for kb in c.get("/v1/kb").json()["data"]] == ["t"]
        assert c.get("/v1/nothing").status_code == 404
    assert loads == [1]


def test_serve_refuses_a_public_address_without_login_and_key(tmp_path: Path) -> None:
    """``glmkb serve --host 0.0.0.0`` without a login: one line, exit 2, nothing loaded."""
    env = clean_env(GLMKB_KB_ROOT=str(tmp_path), GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.run(
        [sys.executable, "-m", "app.glmkb_cli", "serve", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("glmkb serve: error: refusing to serve on 0.0.0.0"), proc.stderr


def test_glmkb_lists_its_subcommands_and_passes_flags_through(capsys: pytest.CaptureFixture[str]) -> None:
    assert {"serve", "web", "api"} <= set(SUBCOMMANDS)
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in ("serve", "web", "api"))
    assert main(["api", "--help"]) == 0  # the glmkb-api command itself, in the group
    assert "--served-model-name" in capsys.readouterr().out
    assert main(["no-such-command"]) == 2


def test_glmkb_web_and_api_are_the_click_commands_of_glmkb_web_and_api(capsys: pytest.CaptureFixture[str]) -> None:
    """D2 of issue 17: ``glmkb-web`` and ``glmkb-api`` were two argparse parsers of the same shape
    beside the click ``glmkb``; now each is one click command, its flags from ``configs.flags``."""
    from app.api.cli import command as api_command
    from app.glmkb_cli import _load
    from app.serve_command import serve_command
    from app.web.cli import command as web_command

    assert _load(SUBCOMMANDS["web"]) is web_command and _load(SUBCOMMANDS["api"]) is api_command
    assert web_command.main_function()(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--auth-user", "--concurrency", "--kb", "--model-path"))
    assert main(["web", "--no-such-flag"]) == 2 and api_command.main_function()(["--port", "x"]) == 2
    both = serve_command.settings_from_argv(["--allow-no-auth", "--host", "0.0.0.0", "--served-model-name", "g"])
    assert both.ui.allow_no_auth and both.api.allow_no_auth and both.api.served_model_name == "g"
    assert not serve_command.settings_from_argv([]).api.allow_no_auth


def test_serve_bounds_web_ui_bodies_before_its_login(tmp_path: Path) -> None:
    """Bug guarded: in ``glmkb serve`` the size limit held only on ``/v1``; Gradio's routes read and
    parse a whole JSON body before their login check, so a 100 MB POST to ``/gradio_api/queue/join``
    without a login took ~370 MiB of memory before its 401. Now such a body gets 413 as it passes
    ``api.max_body_bytes`` (declared or chunked), and uploads still reach the UI's own guard."""
    settings = served_settings(Settings(
        kb_root=tmp_path, embedding={"model": "none"}, api={"max_body_bytes": 64 * 1024},
        ui={"port": free_port(), "auth_user": "u", "auth_password": "pw"},
    ))
    join = "/gradio_api/queue/join"

    def chunked() -> Iterator[bytes]:
        yield b'{"data": ["'
        for _ in range(64):
            yield b"x" * 16 * 1024
        yield b'"]}'

    app = create_server_app(Services(settings, api_key="k"))
    with running(app, settings.ui.port) as base, httpx.Client(base_url=base, timeout=60) as c:
        assert c.post(join, json={"data": [], "fn_index": 0}).status_code == 401  # small: the login answers
        big = c.post(join, content=b"x" * 128 * 1024, headers={"content-type": "application/json"})
        streamed = c.post(join, content=chunked(), headers={"content-type": "application/json"})
        assert (big.status_code, streamed.status_code) == (413, 413), (big.text, streamed.text)
        upload = c.post("/gradio_api/upload", files={"files": ("a.txt", b"x" * 100 * 1024)})
        assert upload.status_code == 401, upload.text  # multipart: the UI's UploadGuard and login decide
        assert c.get("/health").status_code == 200


def test_serve_keeps_at_most_ui_max_sessions_page_sessions(tmp_path: Path) -> None:
    """Bug guarded: ``glmkb-web`` passed ``ui.max_sessions`` to Gradio (``state_session_capacity``) but
    ``glmkb serve`` did not, so its page kept Gradio's default 10,000 sessions' state in memory."""
    settings = served_settings(Settings(kb_root=tmp_path, embedding={"model": "none"}, ui={"max_sessions": 7}))
    app = create_server_app(Services(settings))
    (page,) = [route.app for route in app.routes if hasattr(getattr(route, "app", None), "state_holder")]
    assert page.state_holder.capacity == 7
