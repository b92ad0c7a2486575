"""Secrets stay secret: safe bind defaults, and no password or API key in reprs, errors or logs.

Every test here captures logs at DEBUG level (root logger, uvicorn, httpx, openai) plus the
process's own stdout/stderr, and greps them for the secret. The existing UI login test
(tests/test_app_server.py) covers the Gradio password on the page path; this file covers the
settings object, the API key of ``glmkb-api`` and the upstream key of ``llm.backend: openai``.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from app.services import Services
from app.web.server import resolve_auth
from configs import Settings, SettingsError, load_settings
from configs.settings import DEFAULT_YAML
from llm import LLMServerError, load_llm
from tests.helpers import api_server, clean_env, http_ok
from tests.test_api import (
    KEY,
    MODEL,
    free_port,
    make_settings,
    scripted,
    user,
    wait_until,
)

PASSWORD = "pw-Ω-7f3a9c-口令"
API_KEY = "sk-glmkb-0d9e7c55a1-e41b8f"
UPSTREAM_KEY_ENV = "GLMKB_TEST_UPSTREAM_KEY"  # not a GLMKB_ settings variable (conftest clears those)
REPO = Path(__file__).resolve().parent.parent


# ------------------------------------------------------------------------------ defaults


def test_ui_and_api_bind_loopback_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Shipped defaults (model, default.yaml and the loaded settings) serve on 127.0.0.1 only,
    and neither server waives its login/key unless told to."""
    shipped = yaml.safe_load(DEFAULT_YAML.read_text(encoding="utf-8"))
    settings = load_settings()
    for section in ("ui", "api"):
        assert shipped[section]["host"] == "127.0.0.1"
        assert getattr(settings, section).host == "127.0.0.1"
        assert getattr(Settings(), section).host == "127.0.0.1"
        assert getattr(settings, section).allow_no_auth is False


# ------------------------------------------------------------------------------ settings


def test_the_ui_password_is_not_in_the_settings_repr_or_dumps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: ``ui.auth_password`` was a plain ``str``, so ``repr(settings)`` (tracebacks,
    debug logs, ``print(settings)``) showed the password. It is a ``SecretStr`` now."""
    monkeypatch.setenv("GLMKB_UI__AUTH_PASSWORD", PASSWORD)
    settings = load_settings(ui={"auth_user": "reader"})
    shown = [repr(settings), str(settings), repr(settings.ui), str(settings.model_dump()), settings.model_dump_json()]
    for text in shown:
        assert PASSWORD not in text
    assert resolve_auth(settings.ui) == ("reader", PASSWORD)  # the login still gets the real value


def test_a_bad_password_value_is_not_echoed_in_the_error(tmp_path: Path) -> None:
    """Regression: validation errors quote the bad input (``(got ...)``), which for the
    password setting printed the password on stderr. A number is still taken as the
    password (YAML reads ``auth_password: 123456`` as an int)."""
    config = tmp_path / "ui.yaml"
    config.write_text("ui:\n  auth_user: reader\n  auth_password: 738261945\n", encoding="utf-8")
    assert resolve_auth(load_settings(config).ui) == ("reader", "738261945")
    config.write_text("ui:\n  auth_password: [738261945, 'x']\n", encoding="utf-8")
    with pytest.raises(SettingsError, match="ui.auth_password") as info:
        load_settings(config)
    assert "738261945" not in str(info.value)
    # other settings keep quoting what was wrong
    with pytest.raises(SettingsError, match="'gpu9'"):
        load_settings(llm={"device": "gpu9"})


def test_a_bad_password_is_not_in_the_verbose_traceback_either() -> None:
    """With ``-v`` the CLIs re-raise, and pydantic's own message quoted ``input_value=...``."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        Settings(ui={"auth_password": [PASSWORD]})
    assert PASSWORD not in str(info.value) and PASSWORD not in repr(info.value)


def test_the_documented_api_key_variable_is_not_read_as_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Regression: ``GLMKB_API_KEY`` (the default ``api.api_key_env``, as docs/SCALING.md says to
    export it) starts with the ``GLMKB_`` settings prefix, so loading settings failed with
    "api_key: unknown setting" and glmkb-api could not start with a key at all. Variables named
    by ``api.api_key_env``, ``llm.api_key_env`` and ``kb.milvus_token_env`` are secrets, not settings."""
    monkeypatch.setenv("GLMKB_API_KEY", API_KEY)
    settings = load_settings()
    assert settings.api.api_key_env == "GLMKB_API_KEY" and API_KEY not in repr(settings)
    # renamed key variables, by YAML/flags or by another GLMKB_ variable, are skipped too
    monkeypatch.setenv("GLMKB_UPSTREAM_KEY", "k1")
    monkeypatch.setenv("GLMKB_MILVUS_SECRET", "k2")
    monkeypatch.setenv("GLMKB_KB__MILVUS_TOKEN_ENV", "GLMKB_MILVUS_SECRET")
    settings = load_settings(llm={"api_key_env": "GLMKB_UPSTREAM_KEY"})
    assert settings.llm.api_key_env == "GLMKB_UPSTREAM_KEY" and settings.kb.milvus_token_env == "GLMKB_MILVUS_SECRET"
    # a misspelt setting is still reported
    monkeypatch.setenv("GLMKB_LLM_DEVICE", "cpu")
    with pytest.raises(SettingsError, match="llm_device: unknown setting"):
        load_settings()


def test_glmkb_web_refusal_never_prints_the_password(tmp_path: Path) -> None:
    """A half-configured login (password without user) is refused in one line without the secret."""
    env = clean_env()
    env.update(GLMKB_KB_ROOT=str(tmp_path), GLMKB_UI__AUTH_PASSWORD=PASSWORD, GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--port", str(free_port()), "-v"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0 and "half configured" in proc.stderr
    assert PASSWORD not in proc.stderr and PASSWORD not in proc.stdout


# ------------------------------------------------------------------------------ the API key


def debug_server(service: Services) -> contextlib.AbstractContextManager[str]:
    """uvicorn at log level debug with its access log on, in a thread on 127.0.0.1."""
    return api_server(service, log_level="debug", access_log=True)


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore", "openai", "app", "llm"):
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def test_the_api_key_never_reaches_the_logs(
    tmp_path: Path, tiny_chatglm: object, debug_logs: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    """Right, wrong and missing keys, streamed and not, at DEBUG level: the key is in no log
    line, no response and no error message."""
    service = Services(make_settings(tmp_path), llm=scripted(tiny_chatglm, max_new_tokens=8), api_key=API_KEY)
    bodies: list[str] = []
    with debug_server(service) as base, httpx.Client(base_url=base, timeout=60) as c:
        good = {"Authorization": f"Bearer {API_KEY}"}
        for headers in (good, {"Authorization": f"Bearer {API_KEY}x"}, {"Authorization": API_KEY}, {}):
            for stream in (False, True):
                r = c.post("/v1/chat/completions", json={"messages": user("你好"), "stream": stream}, headers=headers)
                bodies.append(r.text)
                assert r.status_code == (200 if headers is good else 401)
        bodies.append(c.get("/v1/kb", headers=good).text)
    out, err = capfd.readouterr()
    assert debug_logs.records, "nothing was logged: the test would prove nothing"
    assert any("chat/completions" in r.getMessage() or "chat/completions" in str(r.args) for r in debug_logs.records) \
        or "chat/completions" in err + out, "the access log did not record the requests"
    for text in (debug_logs.text, out, err, *bodies):
        assert API_KEY not in text


def test_glmkb_api_process_with_a_key_never_prints_it(tmp_path: Path) -> None:
    """The real ``glmkb-api -v`` (INFO logs) with ``GLMKB_API_KEY`` set: its start-up line says a
    key is required, and neither its output nor a 401 shows the key."""
    port = free_port()
    env = clean_env()
    env.update(GLMKB_API_KEY=API_KEY, GLMKB_KB_ROOT=str(tmp_path), GLMKB_EMBEDDING__MODEL="none")
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.api", "--port", str(port), "-v"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: http_ok(f"{base}/health"), timeout=90)
        assert httpx.get(f"{base}/v1/kb", timeout=10).status_code == 401
        assert httpx.get(f"{base}/v1/kb", headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10).status_code == 200
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    assert "API key required" in err
    assert API_KEY not in out and API_KEY not in err


def test_the_upstream_key_of_the_openai_backend_never_reaches_the_logs(
    tmp_path: Path,
    tiny_chatglm: object,
    monkeypatch: pytest.MonkeyPatch,
    debug_logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """``llm.backend: openai`` with the key in ``$llm.api_key_env``: the openai SDK and httpx log
    requests at DEBUG; the key must not be among what they log, nor in the client's repr or in
    the one-line error of a rejected key."""
    service = Services(make_settings(tmp_path), llm=scripted(tiny_chatglm, max_new_tokens=8), api_key=API_KEY)
    with debug_server(service) as base:
        monkeypatch.setenv(UPSTREAM_KEY_ENV, API_KEY)
        settings = Settings(
            embedding={"model": "none"},
            llm={"backend": "openai", "base_url": f"{base}/v1", "model": MODEL, "api_key_env": UPSTREAM_KEY_ENV},
        )
        chat = load_llm(settings)
        assert "".join(piece.text for piece in chat.stream("你好")) and chat.invoke("你好").text
        assert API_KEY not in repr(chat) and API_KEY not in str(chat.model_dump())
        monkeypatch.setenv(UPSTREAM_KEY_ENV, API_KEY + "-wrong")
        with pytest.raises(LLMServerError, match="rejected the API key") as info:
            load_llm(settings).invoke("你好")
        assert API_KEY not in str(info.value)
    out, err = capfd.readouterr()
    assert any(r.name.startswith(("openai", "httpx")) for r in debug_logs.records), "the SDK logged nothing"
    for text in (debug_logs.text, out, err):
        assert API_KEY not in text


def test_a_key_sent_with_a_wrong_scheme_is_not_echoed(tmp_path: Path, tiny_chatglm: object) -> None:
    """The 401 message names the variable the server reads, never what the client sent or the key."""
    service = Services(make_settings(tmp_path), llm=scripted(tiny_chatglm), api_key=KEY)
    with debug_server(service) as base:
        r = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Basic {API_KEY}"}, timeout=10)
    assert r.status_code == 401 and "GLMKB_API_KEY" in r.text
    assert API_KEY not in r.text and KEY not in r.text
