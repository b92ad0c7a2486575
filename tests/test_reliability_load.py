"""Load: many concurrent chat streams through the web UI and the API, on loopback, bounded in time.

The server runs in its own process (the web UI and the API side by side, sharing one tiny
ChatGLM, as a deployment would), so its thread count and RSS can be read from ``/proc`` without
the test's own client threads in the numbers. The model is the tiny GLM forced to say a
*different* answer for every question (``PerQuestionChatGLM``): a stream that received any
piece of another stream's answer (cross-talk) fails its check.

- 16 concurrent streams through the web UI (gradio_client), 32 through the API (httpx,
  server-sent events), then both at once (48), twice: every stream ends without error with
  exactly its own answer, and every intermediate update is a prefix of it.
- After each round (and a settle time) the server's thread count and RSS are back at the
  baseline taken after a warm-up round of the same load (tolerances in docs/RELIABILITY.md).
- Clients that disconnect mid-stream (API) or press Stop (UI) while others wait stop their
  generations (``llm.streaming.model_is_busy``), the waiting ones get their own answers, and the
  next request is served normally.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import Field

from app.web.chat import THINKING
from llm import ChatGLM
from llm.streaming import model_is_busy
from tests.fixtures.models import ForcedTokens
from tests.helpers import clean_env

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated:DeprecationWarning"),
]

REPO = Path(__file__).resolve().parent.parent
NAMES = "刘备关羽张飞曹操孙权诸葛亮赵云马超黄忠魏延周瑜鲁肃吕蒙陆逊司马懿"
MARKER = re.compile(r"〔Q(\d+)〕")
UI_STREAMS, API_STREAMS = 16, 32
THREAD_SLACK = 4  # server threads allowed above the at-rest baseline (see docs/RELIABILITY.md)
RSS_SLACK_MB = 64  # RSS growth allowed over the at-rest baseline after 192 more streams
SETTLE_S = 11.0  # anyio retires worker threads idle for more than 10 s


def question(i: int) -> str:
    return f"〔Q{i:02d}〕刘备和谁结义？"


def answer(i: int) -> str:
    """A distinct answer per question (about 25 tokens of the tiny tokenizer)."""
    names = "".join(NAMES[(i * 3 + k) % len(NAMES)] for k in range(8))
    return f"〔A{i:02d}〕第{i}号回答：{names}。"


class PerQuestionChatGLM(ChatGLM):
    """The tiny ChatGLM forced to answer question ``i`` (marked ``〔Qi〕`` in the prompt) with
    ``answer(i)``, or with ``long_answer`` for questions listed in ``long_questions``. Keeps each
    generation's ``ForcedTokens`` so tests can see when a generation stopped."""

    long_questions: set[int] = Field(default_factory=set, exclude=True)
    long_answer: str = "刘备关羽张飞" * 600
    processors: dict[int, ForcedTokens] = Field(default_factory=dict, exclude=True)

    def _generate_kwargs(self, prompts: list[str], kwargs: dict[str, Any]) -> dict[str, Any]:
        out = super()._generate_kwargs(prompts, kwargs)
        # The rendered input: API chat completions reach the model as messages (ChatGLMChat), not a prompt.
        found = MARKER.search(self.tokenizer.decode(out["input_ids"][0]))
        assert found, "every load-test prompt carries its question marker"
        i = int(found.group(1))
        text = self.long_answer if i in self.long_questions else answer(i)
        processor = ForcedTokens(self.tokenizer.encode(text, add_special_tokens=False), eos_id=self.tokenizer.eos_token_id)
        self.processors[i] = processor
        out["logits_processor"] = [processor]
        return out


# ------------------------------------------------------------------------------ the server process

SERVER = textwrap.dedent(
    """
    import os, sys, threading
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    import uvicorn
    from app.api import create_app
    from app.services import Services
    from app.web.server import launch
    from app.web.ui import build_ui
    from configs import Settings
    from tests.test_reliability_load import PerQuestionChatGLM

    model_dir, kb_root, ui_port, api_port = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    llm = PerQuestionChatGLM.from_model_path(model_dir, device="cpu", temperature=0.0, max_new_tokens=64)
    settings = Settings(kb_root=kb_root, kb_name="sanguo", embedding={"model": "none"},
                        retrieval={"mode": "bm25", "top_k": 3}, llm={"max_input_tokens": 2048},
                        ui={"port": ui_port, "concurrency": 4}, api={"port": api_port})
    demo = build_ui(Services(settings, llm=llm))
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    api = uvicorn.Server(uvicorn.Config(create_app(Services(settings, llm=llm)), host="127.0.0.1",
                                        port=api_port, log_level="warning", lifespan="off"))
    threading.Thread(target=api.run, daemon=True).start()
    while not api.started:
        threading.Event().wait(0.05)
    print("ready", flush=True)
    sys.stdin.read()  # serve until the test closes stdin
    api.should_exit = True
    demo.close()
    """
)


def proc_status(pid: int) -> tuple[int, float]:
    """(threads, RSS in MiB) of a process, from /proc."""
    threads = len(os.listdir(f"/proc/{pid}/task"))
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return threads, int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def kb_root(tmp_path_factory: pytest.TempPathFactory, sanguo_path: Path) -> Path:
    from kb import KnowledgeBase

    root = tmp_path_factory.mktemp("load_kb_root")
    KnowledgeBase(root, "sanguo", create=True, embedding_model="none").add_texts(
        {"sanguo.txt": sanguo_path.read_text(encoding="utf-8")[:40_000]}
    )
    return root


@contextlib.contextmanager
def server_process(tiny_glm_dir: Path, kb_root: Path) -> Iterator[tuple[int, str, str]]:
    from tests.test_app import free_port

    ui_port, api_port = free_port(), free_port()
    env = clean_env()
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(tiny_glm_dir), str(kb_root), str(ui_port), str(api_port)],
        cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", "the server did not start"
        yield proc.pid, f"http://127.0.0.1:{ui_port}/", f"http://127.0.0.1:{api_port}"
    finally:
        if proc.stdin:
            proc.stdin.close()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


# ------------------------------------------------------------------------------ clients


def ui_stream(url: str, i: int) -> list[str]:
    """One web-UI question; returns every answer text the page showed, in order."""
    from gradio_client import Client

    from tests.test_app import answers

    client = Client(url, verbose=False, download_files=False)
    job = client.submit(question(i), "sanguo", "bm25", 3, api_name="/ask")
    final = job.result(timeout=240)
    shown = [answers(out[1])[-1] for out in job.outputs() if isinstance(out[1], list) and answers(out[1])]
    shown.append(answers(final[1])[-1])
    return [text for text in shown if text != THINKING]  # the placeholder before the first token


def api_stream(base: str, i: int, *, kb: bool) -> list[str]:
    """One streamed API completion (plain or knowledge-base chat); returns the text so far after each event."""
    from tests.test_api import sse_events

    path = "/v1/kb/sanguo/chat/completions" if kb else "/v1/chat/completions"
    body = {"messages": [{"role": "user", "content": question(i)}], "stream": True}
    texts, text = [], ""
    with httpx.Client(base_url=base, timeout=240) as client, client.stream("POST", path, json=body) as response:
        assert response.status_code == 200, response.read()
        for event in sse_events(response):
            if event == "[DONE]":
                break
            data = json.loads(event)
            assert "error" not in data, data
            if data["choices"]:
                text += data["choices"][0]["delta"].get("content") or ""
                texts.append(text)
    return texts


def check_own_answer(i: int, shown: list[str]) -> None:
    """The stream of question ``i`` showed only prefixes of its own answer and ended with all of it."""
    expected = answer(i)
    assert shown and shown[-1] == expected, (i, shown[-1:])
    assert all(expected.startswith(text) for text in shown), (i, [t for t in shown if not expected.startswith(t)][:1])


def run_round(ui_url: str | None, api_url: str | None, *, first: int = 0) -> float:
    """Every stream of one round at once; returns the round's wall time."""
    jobs: list[tuple[int, Any]] = []
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=UI_STREAMS + API_STREAMS) as pool:
        if ui_url:
            jobs += [(i, pool.submit(ui_stream, ui_url, i)) for i in range(first, first + UI_STREAMS)]
        if api_url:
            offset = first + UI_STREAMS
            jobs += [(i, pool.submit(api_stream, api_url, i, kb=i % 2 == 0)) for i in range(offset, offset + API_STREAMS)]
        for i, future in jobs:
            check_own_answer(i, future.result(timeout=300))
    return time.monotonic() - started


def idle_state(pid: int, ui_url: str, api_url: str, i: int) -> tuple[int, float]:
    """The server's (threads, RSS MiB) at rest: after SETTLE_S without requests (longer than
    anyio's 10 s idle limit for worker threads), then one request through each server, which
    is when anyio retires the idle workers of that server's event loop."""
    time.sleep(SETTLE_S)
    check_own_answer(i, ui_stream(ui_url, i))
    check_own_answer(i + 1, api_stream(api_url, i + 1, kb=False))
    time.sleep(0.5)
    return proc_status(pid)


# ------------------------------------------------------------------------------ tests


@pytest.mark.slow
def test_concurrent_streams_get_their_own_answers_and_resources_return(tiny_glm_dir: Path, kb_root: Path) -> None:
    with server_process(tiny_glm_dir, kb_root) as (pid, ui_url, api_url):
        run_round(ui_url, api_url)  # warm-up: Gradio's and anyio's worker pools, tokenizer caches
        base_threads, base_rss = idle_state(pid, ui_url, api_url, 90)
        report = [f"at rest after a warm-up round: {base_threads} threads, {base_rss:.0f} MiB"]
        first = 100
        for repeat in (1, 2):
            for name, ui, api in (("ui x16", ui_url, None), ("api x32", None, api_url), ("ui+api x48", ui_url, api_url)):
                elapsed = run_round(ui, api, first=first)
                first += 100
                threads, rss = proc_status(pid)
                report.append(f"{name} #{repeat}: {elapsed:.1f} s, then {threads} threads, {rss:.0f} MiB")
        threads, rss = idle_state(pid, ui_url, api_url, 95)
        report.append(f"at rest afterwards: {threads} threads, {rss:.0f} MiB")
        print("\n" + "\n".join(report))
        assert threads <= base_threads + THREAD_SLACK, report
        assert rss - base_rss <= RSS_SLACK_MB, report


def test_disconnecting_clients_stop_their_generations_while_others_wait(tiny_chatglm: ChatGLM, kb_root: Path) -> None:
    """Six API streams at once: three ask for a 3,600-token answer and hang up after a few
    events, three ask normal questions. The long generations stop within a few tokens of the
    hang-up, the others get exactly their answers, the model ends idle, the next request works."""
    from app.services import Services
    from configs import Settings
    from tests.test_api import running, sse_events

    llm = PerQuestionChatGLM(model=tiny_chatglm.model, tokenizer=tiny_chatglm.tokenizer, temperature=0.0,
                             max_new_tokens=4000, long_questions={1, 3, 5})
    settings = Settings(kb_root=kb_root, kb_name="sanguo", embedding={"model": "none"},
                        retrieval={"mode": "bm25", "top_k": 3}, llm={"max_input_tokens": 2048})

    def hang_up(base: str, i: int) -> int:
        body = {"messages": [{"role": "user", "content": question(i)}], "stream": True}
        with httpx.Client(base_url=base, timeout=120) as c, c.stream("POST", "/v1/chat/completions", json=body) as r:
            events = sse_events(r)
            for _ in range(6):
                next(events)
        return i

    with running(Services(settings, llm=llm)) as base, ThreadPoolExecutor(6) as pool:
        quitters = [pool.submit(hang_up, base, i) for i in (1, 3, 5)]
        stayers = [(i, pool.submit(api_stream, base, i, kb=i == 2)) for i in (0, 2, 4)]
        for future in quitters:
            future.result(timeout=120)
        for i, future in stayers:
            check_own_answer(i, future.result(timeout=120))
        from tests.test_api import wait_until

        assert wait_until(lambda: not model_is_busy(llm.model), timeout=20)
        steps = {i: llm.processors[i].steps for i in (1, 3, 5)}
        time.sleep(0.3)
        assert {i: llm.processors[i].steps for i in (1, 3, 5)} == steps  # nothing is still generating
        print(f"\ntokens generated by the abandoned 3,600-token answers: {steps}")
        assert all(s < 200 for s in steps.values()), steps  # each stopped soon after its client left
        check_own_answer(6, api_stream(base, 6, kb=False))  # the next request is served normally


def test_stop_in_the_ui_while_others_wait(tiny_chatglm: ChatGLM, kb_root: Path) -> None:
    """Four web-UI sessions: two long answers are stopped (Stop button = cancel) mid-stream,
    two others queued behind them get their own answers; the model ends idle."""
    from app.services import Services
    from configs import Settings
    from tests.test_api import wait_until
    from tests.test_app import client, free_port, serve

    llm = PerQuestionChatGLM(model=tiny_chatglm.model, tokenizer=tiny_chatglm.tokenizer, temperature=0.0,
                             max_new_tokens=4000, long_questions={1, 3})
    settings = Settings(kb_root=kb_root, kb_name="sanguo", embedding={"model": "none"},
                        retrieval={"mode": "bm25", "top_k": 3}, llm={"max_input_tokens": 2048},
                        ui={"port": free_port(), "concurrency": 4})
    with serve(Services(settings, llm=llm)) as url:
        long_jobs = [client(url).submit(question(i), "sanguo", "bm25", 3, api_name="/ask") for i in (1, 3)]
        with ThreadPoolExecutor(2) as pool:
            short = [(i, pool.submit(ui_stream, url, i)) for i in (0, 2)]
            stopped: set[int] = set()

            def stop_streaming_ones() -> bool:
                # The model runs one generation at a time: Stop each long answer once it streams.
                for n, job in enumerate(long_jobs):
                    if n not in stopped and len(job.outputs()) > 5:
                        job.cancel()
                        stopped.add(n)
                return len(stopped) == len(long_jobs)

            assert wait_until(stop_streaming_ones, timeout=120), "the long answers did not stream"
            for i, future in short:
                check_own_answer(i, future.result(timeout=120))
        assert wait_until(lambda: not model_is_busy(llm.model), timeout=20)
        steps = {i: llm.processors[i].steps for i in (1, 3)}
        print(f"\ntokens generated by the stopped 3,600-token answers: {steps}")
        assert all(s < 1500 for s in steps.values()), steps
        check_own_answer(4, ui_stream(url, 4))


def test_browser_sessions_kept_in_memory_are_bounded(tiny_chatglm: ChatGLM, kb_root: Path) -> None:
    """Regression: every browser session's state (conversation, rendered chat) stayed in memory
    until Gradio's default of 10,000 sessions, about 160 KiB each here (~1.6 GB). ``ui.max_sessions``
    bounds it; a session pushed out answers its next question as a new conversation."""
    from gradio_client import Client

    from app.web.server import launch
    from app.services import Services
    from app.web.ui import build_ui
    from configs import Settings
    from tests.test_app import answers, free_port

    llm = PerQuestionChatGLM(model=tiny_chatglm.model, tokenizer=tiny_chatglm.tokenizer, temperature=0.0,
                             max_new_tokens=64)
    settings = Settings(kb_root=kb_root, kb_name="sanguo", embedding={"model": "none"},
                        retrieval={"mode": "bm25", "top_k": 2}, llm={"max_input_tokens": 2048},
                        ui={"port": free_port(), "max_sessions": 4})
    assert Settings().ui.max_sessions == 1000
    demo = build_ui(Services(settings, llm=llm))
    launch(demo, settings, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{settings.ui.port}/"
        old = Client(url, verbose=False, download_files=False)
        assert answers(old.predict(question(0), "sanguo", "bm25", 2, api_name="/ask")[1]) == [answer(0)]
        for i in range(1, 9):
            check_own_answer(i, ui_stream(url, i))
            assert len(demo.state_holder.session_data) <= 4
        chat = old.predict(question(9), "sanguo", "bm25", 2, api_name="/ask")[1]
        assert answers(chat) == [answer(9)]  # forgotten: a new conversation, not an error
    finally:
        demo.close()
