"""Serving policy of the web UI: bind address and login, CLI flags, lazy shared model, no internet."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import click
import pytest

from app.web.cli import command as web_command
from app.web.server import AuthConfigError, is_loopback, launch, resolve_auth
from app.services import Services
from app.web.ui import build_ui
from app.web.widgets import banner_markdown, llm_problem
from configs import Settings, UISettings, load_settings
from tests.helpers import clean_env
from tests.test_app import free_port

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]
REPO = Path(__file__).resolve().parent.parent


def port_is_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


# ------------------------------------------------------------------------------ bind policy


def test_non_loopback_host_without_login_refuses_to_start(tmp_path: Path) -> None:
    """The real entry point prints one clear line and exits 2; nothing is loaded or bound."""
    port = free_port()
    env = clean_env()
    env.update(GLMKB_KB_ROOT=str(tmp_path), GRADIO_ANALYTICS_ENABLED="False")
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "app", "--host", "0.0.0.0", "--port", str(port), "--model-path", "/no/such/model"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("glmkb-web: error: refusing to serve on 0.0.0.0 without a login")
    assert "GLMKB_UI__AUTH_PASSWORD" in lines[0] and "--allow-no-auth" in lines[0]
    assert "Traceback" not in proc.stderr and not port_is_open(port)
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_hosts_need_no_login(host: str) -> None:
    assert is_loopback(host)
    assert resolve_auth(UISettings(host=host)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com", "my-server"])
def test_other_hosts_need_a_login_or_an_explicit_opt_out(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(AuthConfigError, match=f"refusing to serve on {host} without a login"):
        resolve_auth(UISettings(host=host))
    assert resolve_auth(UISettings(host=host, allow_no_auth=True)) is None
    assert resolve_auth(UISettings(host=host, auth_user="u", auth_password="p")) == ("u", "p")


@pytest.mark.parametrize("given", [{"auth_user": "u"}, {"auth_password": "p"}])
def test_half_configured_login_is_an_error(given: dict[str, str]) -> None:
    with pytest.raises(AuthConfigError, match="half configured"):
        resolve_auth(UISettings(**given))


def test_login_is_required_and_the_password_never_logged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    from gradio_client import Client

    secret = "s3cret-Pa55-纸"
    monkeypatch.setenv("GLMKB_UI__AUTH_PASSWORD", secret)
    caplog.set_level(logging.DEBUG)
    settings = load_settings(
        kb_root=str(tmp_path), embedding={"model": "none"}, ui={"port": free_port(), "auth_user": "reader"}
    )
    demo = build_ui(Services.from_settings(settings))
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{settings.ui.port}/"
        with pytest.raises(Exception):  # noqa: B017 - the client's error type for 401 varies
            Client(url, verbose=False).predict(api_name="/banner")
        with pytest.raises(Exception):  # noqa: B017
            Client(url, verbose=False, auth=("reader", "wrong")).predict(api_name="/banner")
        update = Client(url, verbose=False, auth=("reader", secret)).predict(api_name="/banner")
        assert "llm.model_path" in update["value"] and "--model-path" not in update["value"]
    finally:
        demo.close()
    out, err = capfd.readouterr()
    assert secret not in caplog.text and secret not in out and secret not in err


def test_launch_reaches_nothing_but_itself(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No telemetry, version check or share tunnel: every name looked up is the loopback server."""
    looked_up: list[str] = []
    real = socket.getaddrinfo

    def recording(host: Any, *args: Any, **kwargs: Any) -> Any:
        looked_up.append(str(host))
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", recording)
    settings = Settings(kb_root=tmp_path, embedding={"model": "none"}, ui={"port": free_port()})
    demo = build_ui(Services(settings))
    assert demo.analytics_enabled is False
    started = time.monotonic()
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        assert time.monotonic() - started < 30
        time.sleep(1.0)  # give any background check a chance to show itself
    finally:
        demo.close()
    assert looked_up and {h for h in looked_up if not is_loopback(h)} == set(), looked_up
    assert demo.share is False


# ------------------------------------------------------------------------------ settings


def test_cli_flags_are_the_top_settings_layer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("GLMKB_UI__PORT", "9001")
    monkeypatch.setenv("GLMKB_LLM__DEVICE", "cpu")
    config = tmp_path / "my.yaml"
    config.write_text("ui:\n  concurrency: 7\nllm:\n  model_path: /from/yaml\n", encoding="utf-8")
    s = web_command.settings_from_argv(
        ["--config", str(config), "--host", "0.0.0.0", "--model-path", "/models/glm", "--kb-root", str(tmp_path),
         "--kb", "三国", "--embedding", "none", "--auth-user", "reader", "--allow-no-auth"]
    )
    assert (s.ui.host, s.ui.port, s.ui.concurrency) == ("0.0.0.0", 9001, 7)  # flag, env, YAML
    assert (s.llm.model_path, s.llm.device) == ("/models/glm", "cpu")
    assert (s.kb_root, s.kb_name, s.embedding.model) == (tmp_path, "三国", "none")
    assert (s.ui.auth_user, s.ui.allow_no_auth) == ("reader", True)
    unset = web_command.settings_from_argv([])
    assert unset.ui.allow_no_auth is False and unset.ui.port == 9001


def test_there_is_no_password_flag() -> None:
    """Passwords on a command line leak through ``ps``; only YAML or the environment set them."""
    with pytest.raises(click.NoSuchOption):
        web_command.settings_from_argv(["--auth-password", "x"])
    assert web_command.main_function()(["--auth-password", "x"]) == 2  # a usage error


# ------------------------------------------------------------------------------ shared model


def test_the_model_is_loaded_once_however_many_users_ask_at_once(tmp_path: Path) -> None:
    calls: list[int] = []

    def factory() -> Any:
        calls.append(1)
        time.sleep(0.3)  # a slow load: every other caller must wait for this one
        return object()

    state = Services(Settings(kb_root=tmp_path), llm_factory=factory)
    got: list[Any] = []
    threads = [threading.Thread(target=lambda: got.append(state.get_llm())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 8 and len({id(g) for g in got}) == 1


def test_a_model_that_fails_to_load_leaves_a_banner_not_a_crash(tmp_path: Path) -> None:
    settings = Settings(kb_root=tmp_path, embedding={"model": "none"}, llm={"model_path": str(tmp_path / "nope")})
    state = Services.from_settings(settings)
    assert llm_problem(state) is None  # not tried yet: it loads lazily
    assert state.get_llm() is None and state.get_llm() is None
    banner = banner_markdown(state)
    assert "加载失败 / failed to load" in banner and f"…/{tmp_path.name}/nope" in banner
    assert str(tmp_path) not in banner, "no server paths in the page"
    assert "llm.model_path" in banner and "--model-path" not in banner


def test_no_model_configured_is_explained(tmp_path: Path) -> None:
    state = Services.from_settings(Settings(kb_root=tmp_path, embedding={"model": "none"}))
    assert state.get_llm() is None
    assert "llm.model_path is not set" in banner_markdown(state)


# ------------------------------------------------------------------------------ the real command


def test_glmkb_web_serves_a_model_folder_end_to_end(tmp_path: Path, tiny_glm_dir: Path, sanguo_path: Path) -> None:
    """``glmkb-web --config ... --model-path DIR``: loads the folder, serves, streams answers."""
    from gradio_client import Client

    from kb import KnowledgeBase
    from tests.test_app import QUESTION, answers, make_settings, sources_boxes

    root = tmp_path / "kb"
    KnowledgeBase.from_settings(make_settings(root), name="sanguo", create=True).add_texts(
        {"sanguo.txt": sanguo_path.read_text(encoding="utf-8")[:20_000]}
    )
    config = tmp_path / "web.yaml"
    config.write_text(
        "llm:\n  max_input_tokens: 2048\n  generation: {max_new_tokens: 16, temperature: 0}\n"
        "retrieval: {mode: bm25, top_k: 2}\n",
        encoding="utf-8",
    )
    port = free_port()
    env = clean_env()
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("glmkb-web")), "--config", str(config), "--port", str(port),
         "--kb-root", str(root), "--kb", "sanguo", "--model-path", str(tiny_glm_dir), "--device", "cpu",
         "--embedding", "none"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 90
        while not port_is_open(port):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "glmkb-web did not start listening"
            time.sleep(0.2)
        c = Client(f"http://127.0.0.1:{port}/", verbose=False)
        job = c.submit(QUESTION, "sanguo", "bm25", 2, api_name="/ask")
        chat = job.result(timeout=120)[1]
        assert answers(chat)[-1] and sources_boxes(chat)
        assert len(job.outputs()) >= 4  # streamed
        assert c.predict(api_name="/banner")["visible"] is False  # the model loaded: nothing to warn about
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    printed = proc.stdout.read() if proc.stdout else ""
    assert f"glmkb web UI: http://127.0.0.1:{port}/" in printed
    assert "share=True" not in printed, "Gradio's share-link hint is not for glmkb users"


def test_one_client_cannot_queue_unbounded_work(tmp_path: Path) -> None:
    """Issue 20 #7: one web client queuing 100 questions blocked other users for over 90 s.
    The queue is bounded (ui.max_queue; more events are refused) and runs ui.concurrency at once."""
    from app.web.server import queue

    settings = Settings(kb_root=tmp_path, embedding={"model": "none"}, ui={"max_queue": 5, "concurrency": 2})
    demo = queue(build_ui(Services(settings)), settings.ui)
    assert demo._queue.max_size == 5  # noqa: SLF001 - Gradio keeps it there
    assert demo._queue.default_concurrency_limit == 2  # noqa: SLF001
